//! `cargo xtask test soak [--count N] [--parallel P] [--json]`: many
//! sandboxes through one private containerd, a few at a time, then proof
//! that nothing leaked.
//!
//! Each sandbox is `ctr run --rm IMAGE sh -c 'echo soak-N'` with
//! `containerd-shim-kata-v2` (a VM per run). While they run, the RSS of
//! every shim of ours is sampled; containerd's open fds are counted before
//! the first sandbox and at the end, its RSS after a warm-up and at the
//! end. Pass: every run printed its line and exited 0, the leftover scan
//! (processes, mounts, sockets, state dirs) is empty, containerd's fd count
//! is back where it was before the first sandbox, and neither containerd's
//! RSS nor the shims' peak RSS grew over the run beyond
//! [`RSS_GROWTH_LIMIT`] (a leak of a few KiB per sandbox would show over a
//! hundred).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::bench::median;
use crate::e2e::bounded::Running;
use crate::e2e::{E2eEnv, EnvOptions, KATA_RUNTIME};
use crate::vmtest::Media;
use xtask::context::Ctx;

/// Allowed growth of containerd's RSS and of the shims' peak RSS between
/// the warm-up and the end of the run.
const RSS_GROWTH_LIMIT: f64 = 0.10;
/// Sandboxes that run before containerd's RSS baseline is taken (its caches
/// and the page cache settle).
const WARMUP: usize = 5;
/// One sandbox's bound on this TCG host (boot, run, teardown).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Args, Clone)]
pub struct SoakArgs {
    /// How many sandboxes in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// How many at a time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Keep containerd's dir afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Serialize)]
struct Report {
    count: u32,
    parallel: u32,
    seconds: f64,
    run_ms_median: f64,
    leftovers: Vec<String>,
    /// Before the first sandbox (containerd idle).
    containerd_fds_before: usize,
    containerd_fds_at_end: usize,
    containerd_rss_kib_after_warmup: u64,
    containerd_rss_kib_at_end: u64,
    /// Peak RSS of each shim, in start order.
    shim_peak_rss_kib_first: u64,
    shim_peak_rss_kib_last: u64,
    shims_sampled: usize,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("read /proc/{pid}/fd"))?
        .count())
}

/// Median of the first and of the last `n` values (in order).
fn ends(values: &[u64], n: usize) -> (u64, u64) {
    let n = n.min(values.len()).max(1);
    let first: Vec<f64> = values.iter().take(n).map(|v| *v as f64).collect();
    let last: Vec<f64> = values.iter().rev().take(n).map(|v| *v as f64).collect();
    (median(first) as u64, median(last) as u64)
}

fn grew(before: u64, after: u64) -> bool {
    after as f64 > before as f64 * (1.0 + RSS_GROWTH_LIMIT)
}

pub fn run(ctx: &Ctx, args: &SoakArgs) -> Result<()> {
    if ctx.dry_run {
        ctx.ui.info(&format!(
            "test soak plan: build (or take from the cache) the release's shim and the guest, start a private containerd, run {} sandboxes {} at a time, then check leftovers, fds and RSS",
            args.count, args.parallel
        ));
        return Ok(());
    }
    let env = E2eEnv::start(
        ctx,
        &EnvOptions {
            kata: true,
            shim: None,
            media: Media::Initrd,
            recipe: "minimal".into(),
            keep: args.keep,
            log_name: "soak",
            template: None,
        },
    )?;
    let cd = &env.containerd;
    // containerd idle, image imported: where its fd count must come back to.
    let fds_idle = fd_count(cd.pid.get())?;
    let started = Instant::now();
    let mut next = 0u32;
    let mut running: Vec<(u32, String, Running, Instant)> = Vec::new();
    let mut durations = Vec::new();
    // Peak RSS per shim pid, and the order shims were first seen in.
    let mut shim_peaks: BTreeMap<u32, u64> = BTreeMap::new();
    let mut shim_order: Vec<u32> = Vec::new();
    // containerd's RSS once the warm-up sandboxes are done.
    let mut rss_after_warmup: Option<u64> = None;
    let mut done = 0u32;
    while done < args.count {
        while running.len() < args.parallel as usize && next < args.count {
            let id = cd.new_id(&format!("soak{next}"));
            let cmd = env.ctr().run_command(
                KATA_RUNTIME,
                &["--rm"],
                &env.image.name,
                &id,
                &["sh", "-c", &format!("echo soak-{next}")],
            );
            running.push((next, id, Running::spawn(cmd, None)?, Instant::now()));
            next += 1;
        }
        for p in cd.our_processes() {
            if p.program().starts_with("containerd-shim") {
                if let Some(rss) = rss_kib(p.pid) {
                    if !shim_peaks.contains_key(&p.pid) {
                        shim_order.push(p.pid);
                    }
                    let peak = shim_peaks.entry(p.pid).or_default();
                    *peak = (*peak).max(rss);
                }
            }
        }
        let mut i = 0;
        while i < running.len() {
            if running[i].2.is_running() && running[i].3.elapsed() < RUN_TIMEOUT {
                i += 1;
                continue;
            }
            let (n, id, r, t) = running.swap_remove(i);
            let out = r.wait(Duration::from_secs(1))?;
            if !out.success() || out.stdout.trim() != format!("soak-{n}") {
                bail!(
                    "sandbox {n} ({id}) failed after {done} good ones: {}\n--- containerd log tail:\n{}",
                    out.describe(),
                    cd.log_tail()
                );
            }
            durations.push(t.elapsed().as_secs_f64() * 1000.0);
            done += 1;
            if done as usize == WARMUP {
                rss_after_warmup = rss_kib(cd.pid.get());
            }
            if done.is_multiple_of(10) {
                ctx.ui.info(&format!(
                    "test soak: {done}/{} sandboxes ({:.0} s)",
                    args.count,
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = started.elapsed().as_secs_f64();
    // The last shims exit after ctr returns; the scan waits for them.
    let t = Instant::now();
    let leftovers = loop {
        let left = cd.leftovers();
        if left.is_empty() || t.elapsed() > Duration::from_secs(60) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // containerd settles (its per-task goroutines and fds go) after the
    // last delete.
    let fds_end = {
        let t = Instant::now();
        loop {
            let now = fd_count(cd.pid.get())?;
            if now <= fds_idle || t.elapsed() > Duration::from_secs(30) {
                break now;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let containerd_rss_end = rss_kib(cd.pid.get()).unwrap_or(0);
    let peaks: Vec<u64> = shim_order.iter().map(|p| shim_peaks[p]).collect();
    let (shim_first, shim_last) = ends(&peaks, 5);
    let report = Report {
        count: args.count,
        parallel: args.parallel,
        seconds,
        run_ms_median: median(durations),
        leftovers: leftovers.clone(),
        containerd_fds_before: fds_idle,
        containerd_fds_at_end: fds_end,
        containerd_rss_kib_after_warmup: rss_after_warmup.unwrap_or(containerd_rss_end),
        containerd_rss_kib_at_end: containerd_rss_end,
        shim_peak_rss_kib_first: shim_first,
        shim_peak_rss_kib_last: shim_last,
        shims_sampled: peaks.len(),
    };
    ctx.ui.info(&format!(
        "test soak: {} sandboxes, {} at a time, in {:.0} s (median run {:.0} ms); leftovers {}; containerd fds {} (idle) -> {}, RSS {} (after warm-up) -> {} KiB; shim peak RSS {} -> {} KiB ({} shims)",
        report.count,
        report.parallel,
        report.seconds,
        report.run_ms_median,
        report.leftovers.len(),
        report.containerd_fds_before,
        report.containerd_fds_at_end,
        report.containerd_rss_kib_after_warmup,
        report.containerd_rss_kib_at_end,
        report.shim_peak_rss_kib_first,
        report.shim_peak_rss_kib_last,
        report.shims_sampled
    ));
    if ctx.json {
        ctx.print_json(&json!(report))?;
    }
    let mut problems = Vec::new();
    if !leftovers.is_empty() {
        problems.push(format!(
            "left behind after 60 s: {} (the shims' own log lines are in {})",
            leftovers.join("; "),
            ctx.rel(&cd.log)
        ));
    }
    if fds_end > fds_idle {
        problems.push(format!(
            "containerd holds {fds_end} fds at the end, {fds_idle} before the first sandbox"
        ));
    }
    if args.count as usize > 2 * WARMUP {
        if grew(
            report.containerd_rss_kib_after_warmup,
            report.containerd_rss_kib_at_end,
        ) {
            problems.push(format!(
                "containerd's RSS grew from {} to {} KiB",
                report.containerd_rss_kib_after_warmup, report.containerd_rss_kib_at_end
            ));
        }
        if grew(shim_first, shim_last) {
            problems.push(format!(
                "the shims' peak RSS grew from {shim_first} to {shim_last} KiB"
            ));
        }
    }
    if peaks.is_empty() {
        problems.push("no shim was ever seen running: the RSS check saw nothing".into());
    }
    if !problems.is_empty() {
        bail!("test soak failed: {}", problems.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_and_ends() {
        assert!(!grew(1000, 1100));
        assert!(grew(1000, 1101));
        assert_eq!(ends(&[1, 2, 3, 10, 20, 30], 3), (2, 20));
        assert_eq!(ends(&[7], 5), (7, 7));
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(fd_count(std::process::id()).unwrap() >= 3);
    }
}
