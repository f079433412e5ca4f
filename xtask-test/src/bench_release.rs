//! `bench release`: what `cargo xtask release` costs a user in a fresh clone.
//!
//! Two clean clones (repro.rs: tracked sources copied, empty caches, their
//! own cargo target dirs, the clone's xtask built first and not timed):
//! - cold, kernel cached: clone A with only the main cache's kernel entry,
//!   [`COLD_SAMPLES`] times (what the clone's releases built is forgotten
//!   between them; its xtask stays built);
//! - cold, nothing cached: clone B builds everything, the kernel included
//!   (and downloads its pinned inputs);
//! - warm no-op: `cargo xtask release` again in clone A, [`WARM_SAMPLES`]
//!   times, as a user types it (cargo's own up-to-date check included).
//!
//! Each cold run's own `--json` report gives what each step cost.
//!
//! A cold run from empty takes 10 to 25 minutes here, so that figure is one
//! sample (the report says so); ratios come from this one run. The sizes are those
//! of clone A's dist, and the report says whether A and B gave identical
//! SHA256SUMS; when they did, the kernel's from-scratch rebuild is recorded
//! as `test repro` would.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::median;
use crate::repro::{self, ClonePair, Rebuilt, SharedStep};
use xtask::context::Ctx;
use xtask::graph::StepTiming;
use xtask::kernel::KernelArgs;

const WARM_SAMPLES: usize = 5;
/// The cold release with the kernel cached is the figure with a target
/// (5 minutes): a median, not one sample of a host whose speed drifts.
const COLD_SAMPLES: usize = 3;

#[derive(Serialize)]
struct Report {
    /// Samples of the cold release with the kernel cached (the one from
    /// empty is one sample).
    cold_samples: usize,
    /// Their median.
    cold_with_cached_kernel_s: f64,
    cold_with_cached_kernel_samples_s: Vec<f64>,
    cold_from_empty_s: f64,
    warm_samples: usize,
    warm_noop_ms_median: f64,
    cold_from_empty_over_cold_with_kernel: f64,
    cold_with_kernel_over_warm: f64,
    /// What each step of the cold runs cost (wall seconds; with the kernel
    /// cached, of the median sample).
    steps_cold_with_cached_kernel: Vec<StepTiming>,
    steps_cold_from_empty: Vec<StepTiming>,
    identical_sha256sums: bool,
    sizes: Vec<(String, u64)>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `agent 198 s, runtime-bins 314 s, ...` for the steps that ran.
fn by_step(steps: &[StepTiming]) -> String {
    let built: Vec<String> = steps
        .iter()
        .filter(|s| !s.cached)
        .map(|s| format!("{} {:.0} s", s.id, s.seconds))
        .collect();
    if built.is_empty() {
        "every step cached".into()
    } else {
        built.join(", ")
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let kernel = xtask::kernel::build(ctx, &KernelArgs::default())?;
    let pair = ClonePair::create(ctx)?;
    let kernel = SharedStep::kernel(&kernel);
    let mut samples = Vec::new();
    for n in 1..=COLD_SAMPLES {
        if n > 1 {
            pair.a.forget_builds()?;
        }
        pair.a.seed(&kernel)?;
        let what = format!("cold, kernel cached, #{n} of {COLD_SAMPLES}");
        let (took, steps) = ClonePair::release(ctx, &pair.a, &what)?;
        ctx.ui.info(&format!(
            "  cold release, kernel cached #{n}: {:.0} s ({})",
            secs(took),
            by_step(&steps)
        ));
        samples.push((took, steps));
    }
    samples.sort_by_key(|(took, _)| *took);
    let (cold_kernel, steps_kernel) = samples[samples.len() / 2].clone();
    let cold_kernel_samples: Vec<f64> = samples.iter().map(|(t, _)| secs(*t)).collect();
    let (cold_empty, steps_empty) = ClonePair::release(ctx, &pair.b, "cold, nothing cached")?;
    ctx.ui.info(&format!(
        "  cold release, nothing cached: {:.0} s ({})",
        secs(cold_empty),
        by_step(&steps_empty)
    ));

    let mut warm = Vec::new();
    for i in 0..WARM_SAMPLES {
        let took = pair.a.release()?.as_secs_f64() * 1000.0;
        ctx.ui
            .info(&format!("  warm no-op release #{}: {took:.0} ms", i + 1));
        warm.push(took);
    }
    let identical = match repro::compare(ctx, &pair.a.dist, &pair.b.dist) {
        Ok(_) => {
            Rebuilt::compare_and_record(ctx, &kernel, &pair.b)?;
            true
        }
        Err(e) => {
            ctx.ui.info(&format!("bench release: {e:#}"));
            false
        }
    };
    let mut sizes = Vec::new();
    for name in repro::sums_by_name(&pair.a.sums()?).into_keys() {
        let len = std::fs::metadata(pair.a.dist.join(&name))
            .with_context(|| format!("{name} in clone a's dist"))?
            .len();
        sizes.push((name, len));
    }
    let warm_m = median(warm);
    let report = Report {
        cold_samples: COLD_SAMPLES,
        cold_with_cached_kernel_s: secs(cold_kernel),
        cold_with_cached_kernel_samples_s: cold_kernel_samples,
        cold_from_empty_s: secs(cold_empty),
        warm_samples: WARM_SAMPLES,
        warm_noop_ms_median: warm_m,
        cold_from_empty_over_cold_with_kernel: secs(cold_empty) / secs(cold_kernel),
        cold_with_kernel_over_warm: secs(cold_kernel) * 1000.0 / warm_m,
        steps_cold_with_cached_kernel: steps_kernel,
        steps_cold_from_empty: steps_empty,
        identical_sha256sums: identical,
        sizes,
    };
    ctx.ui.info(&format!(
        "bench release: cold with cached kernel {:.0} s (median of {COLD_SAMPLES}), cold from empty {:.0} s ({:.2}x), warm no-op {:.0} ms (median of {WARM_SAMPLES}); identical SHA256SUMS: {}",
        report.cold_with_cached_kernel_s,
        report.cold_from_empty_s,
        report.cold_from_empty_over_cold_with_kernel,
        report.warm_noop_ms_median,
        report.identical_sha256sums
    ));
    for (name, len) in &report.sizes {
        ctx.ui.info(&format!("  {name}: {len} B"));
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?)?;
    }
    Ok(())
}
