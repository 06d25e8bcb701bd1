//! orch: drives tracker work items through an AI-agent delivery pipeline,
//! one crash-safe, idempotent tick at a time.
//!
//! The binary (`src/main.rs`, `src/cli.rs`, `src/cmd/`) parses and prints;
//! everything here is the core. See `docs/DESIGN.md` for the contract.

pub mod acp;
pub mod adapters;
pub mod agent;
pub mod backoff;
pub mod brief;
pub mod build_info;
pub mod check;
pub mod ci;
pub mod clock;
pub mod config;
pub mod config_check;
pub mod ctx;
pub mod db;
pub mod deliver;
pub mod error;
pub mod failpoint;
pub mod fence;
pub mod forge;
pub mod git;
pub mod ingest;
pub mod lock;
pub mod merge_gate;
pub mod metrics;
pub mod model;
pub mod notifier;
pub mod outbox;
pub mod pipeline;
pub mod process;
pub mod reap;
pub mod reconcile;
pub mod report;
pub mod sandbox;
pub mod serve;
pub mod sql;
pub mod staging;
pub mod status;
pub mod tick;
pub mod tracker;
pub mod untrusted;
pub mod webhook;
pub mod webhook_source;
pub mod why;
pub mod worker;
