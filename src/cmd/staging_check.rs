//! `orch staging-check`: the staging suite ([`orch::staging`]) against the
//! instance at `--url`, with its database (`--db`) and config
//! (`--config`); exit 0 PASS, 3 FAIL, 75 INFRA. `--dry-run` runs the
//! checks that only read (C1–C4) and lists what the others would do.

use std::time::Duration;

use super::Output;
use crate::cli::StagingCheckArgs;
use orch::config::Settings;
use orch::error::{exit, Error};
use orch::staging::{self, Status, Target};

/// Runs the suite; returns what to print and the exit code.
///
/// Errors: [`Error::Usage`] for an unknown check id in `--waive` or a URL
/// that is not http(s).
pub fn run(settings: &Settings, args: StagingCheckArgs) -> anyhow::Result<(Output, i32)> {
    let waive = staging::parse_waivers(&args.waive)?;
    let url = args.url.trim().to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Usage(format!(
            "--url must be an http:// or https:// URL, got {url:?}"
        ))
        .into());
    }
    let target = Target {
        url,
        db: settings.db_path.clone(),
        config: settings.config_path.clone(),
        project: args.project,
        expect_revision: args.expect_revision.filter(|r| !r.trim().is_empty()),
        waive,
        timeout: Duration::from_secs(args.timeout_s),
        dry_run: args.dry_run,
    };
    let report = staging::run(settings, &target);
    let code = match report.verdict {
        Status::Pass => exit::OK,
        Status::Fail => exit::VERDICT_FAIL,
        Status::Infra => exit::BUSY,
    };
    Ok((
        Output {
            json: serde_json::to_value(&report)?,
            text: format!(
                "{}{}",
                if args.dry_run {
                    super::DRY_RUN_NOTE
                } else {
                    ""
                },
                report.text()
            ),
        },
        code,
    ))
}
