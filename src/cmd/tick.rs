//! `orch tick`: one tick ([`orch::tick::run`]), printed step by step.

use super::Output;
use orch::ctx::Ctx;
use orch::tick::{self, Step};

/// Runs one tick of at most `max_jobs` jobs; `dry_run` rehearses it.
pub fn run(ctx: &Ctx, max_jobs: u32, dry_run: bool) -> anyhow::Result<Output> {
    let started = std::time::Instant::now();
    if !dry_run {
        // As `work-once`: a stop stops the running agent and claims no more.
        orch::process::stop_on_signals()?;
    }
    let report = tick::run(ctx, max_jobs, dry_run)?;
    let mut counts = Vec::new();
    counts.extend(ran(&report.ingest).map_or_else(Vec::new, super::ingest::counts));
    counts.extend(ran(&report.reap).map_or_else(Vec::new, |r| super::reap::counts(&r.actions)));
    counts.extend(ran(&report.reconcile).map_or_else(Vec::new, super::reconcile::counts));
    counts.extend(ran(&report.ci).map_or_else(Vec::new, super::ci::counts));
    counts.extend(ran(&report.deliver).map_or_else(Vec::new, super::deliver::counts));
    counts.push(("jobs", report.work.len(), true));
    if let Some(r) = ran(&report.merge_line) {
        let landed = r
            .iter()
            .flat_map(|p| &p.batches)
            .map(|b| b.landed.len())
            .sum();
        counts.push(("landed", landed, true));
    }
    let mut text = String::new();
    if dry_run {
        text += super::DRY_RUN_NOTE;
    } else {
        super::finish_tick(ctx, "tick", started, &counts);
    }
    let line = |text: &mut String, name: &str, step: Option<String>| match step {
        None => *text += &format!("{name}: busy, skipped\n"),
        Some(t) => *text += &format!("{name}: {}\n", t.trim_end().replace('\n', "\n  ")),
    };
    line(
        &mut text,
        "ingest",
        ran(&report.ingest)
            .map(|s| format!("{} processed, {} failed", s.processed.len(), s.failed.len())),
    );
    line(
        &mut text,
        "reap",
        ran(&report.reap).map(|r| super::reap::text(&r.actions)),
    );
    line(
        &mut text,
        "reconcile",
        ran(&report.reconcile).map(|p| super::reconcile::text(p, dry_run)),
    );
    line(&mut text, "ci", ran(&report.ci).map(super::ci::text));
    if dry_run {
        line(
            &mut text,
            "deliver",
            ran(&report.deliver).map(super::deliver::would_text),
        );
        text += &format!("work: would claim {} job(s)\n", report.work.len());
        for o in &report.work {
            text += &format!("  {}\n", super::work_once::text(o));
        }
    } else {
        line(
            &mut text,
            "deliver",
            ran(&report.deliver).map(super::deliver::text),
        );
        text += &format!("work: ran {} job(s)\n", report.work.len());
    }
    line(
        &mut text,
        "merge line",
        ran(&report.merge_line).map(|r| {
            if r.is_empty() {
                "nothing ready to merge".to_string()
            } else {
                r.iter()
                    .map(|p| {
                        let landed: usize = p.batches.iter().map(|b| b.landed.len()).sum();
                        let back: usize = p.batches.iter().map(|b| b.sent_back.len()).sum();
                        let out: usize = p.batches.iter().map(|b| b.taken_out.len()).sum();
                        match &p.busy {
                            Some(b) if p.batches.is_empty() => format!("{}: waits: {b}", p.project),
                            _ => format!(
                                "{}: {} batch(es), {landed} landed, {back} sent back{}",
                                p.project,
                                p.batches.len(),
                                if out > 0 {
                                    format!(", {out} taken out (someone else pushed)")
                                } else {
                                    String::new()
                                }
                            ),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }),
    );
    Ok(Output {
        json: serde_json::to_value(&report)?,
        text,
    })
}

fn ran<T>(s: &Step<T>) -> Option<&T> {
    match s {
        Step::Ran(t) => Some(t),
        Step::Busy => None,
    }
}
