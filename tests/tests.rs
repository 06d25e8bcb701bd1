//! One integration test binary: each module drives the built `orch` binary
//! against a sandbox of real SQLite, real git and real HTTP on loopback.

mod util;

mod acp;
mod agents;
mod ci;
mod cli;
mod fence;
mod hardening;
mod hostile;
mod hosts;
mod ingest;
mod kinds;
mod layers;
mod logs;
mod merge_line;
mod metrics;
mod migrate;
mod operator;
mod pipeline;
mod resume;
mod rework;
// Crash points and the test clock need the `testing` feature.
#[cfg(feature = "testing")]
mod adapters;
#[cfg(feature = "testing")]
mod detach;
#[cfg(feature = "testing")]
mod fakes;
#[cfg(feature = "testing")]
mod limits;
#[cfg(feature = "testing")]
mod merge_gate;
#[cfg(feature = "testing")]
mod outbox;
#[cfg(feature = "testing")]
mod reap;
#[cfg(feature = "testing")]
mod reconcile;
mod shim;
#[cfg(feature = "testing")]
mod staging;
mod why;
