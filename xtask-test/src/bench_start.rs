//! `bench start`: container start latency through a real containerd, this
//! runtime against runc, and the memory of one idle sandbox.
//!
//! `ctr run --rm IMAGE true` is timed end to end (create, start, exit,
//! delete), alternating kata and runc in one containerd so both see the same
//! machine load; the ratio is of the two medians of that one run. The
//! footprint is the PSS of the shim and its descendants (QEMU, virtiofsd,
//! vhost-device-vsock) while a `sleep` container idles.
//!
//! Then the same through CRI (cri/, containerd's CRI plugin and CNI in a
//! test-made netns): RunPodSandbox until the pod's first container is
//! RUNNING, handlers kata and runc alternated in one containerd, medians
//! and their ratio of that one run.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::bench::median;
use crate::cri::{time_pod_start, CriArgs, CriEnv};
use crate::e2e::containerd::{KATA_HANDLER, RUNC_HANDLER};
use crate::e2e::{sandbox_footprint, E2eEnv, EnvOptions, KATA_RUNTIME, RUNC_RUNTIME};
use crate::vmtest::Media;
use xtask::context::Ctx;

const SAMPLES: usize = 10;
/// A kata pod boots a VM and sets up CNI: fewer samples keep the bench
/// within minutes on TCG.
const POD_SAMPLES: usize = 5;

#[derive(Serialize)]
struct StartReport {
    samples_each: usize,
    kata_run_true_ms_median: f64,
    runc_run_true_ms_median: f64,
    kata_over_runc_ratio: f64,
    idle_sandbox_pss_kib: u64,
    idle_sandbox_processes: Vec<(u32, String, u64)>,
    pod_samples_each: usize,
    kata_pod_start_ms_median: f64,
    runc_pod_start_ms_median: f64,
    kata_over_runc_pod_start_ratio: f64,
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let opts = EnvOptions {
        kata: true,
        shim: None,
        media: Media::Initrd,
        recipe: "minimal".into(),
        keep: false,
    };
    let env = E2eEnv::start(ctx, &opts)?;
    // One of each first: page cache and image unpacking are not what we measure.
    env.time_run_true(KATA_RUNTIME, "warm-kata")?;
    env.time_run_true(RUNC_RUNTIME, "warm-runc")?;
    let (mut kata, mut runc) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let k = env.time_run_true(KATA_RUNTIME, &format!("k{i}"))?;
        let r = env.time_run_true(RUNC_RUNTIME, &format!("r{i}"))?;
        ctx.ui.info(&format!(
            "  #{}: kata {} ms, runc {} ms",
            i + 1,
            k.as_millis(),
            r.as_millis()
        ));
        kata.push(k.as_secs_f64() * 1000.0);
        runc.push(r.as_secs_f64() * 1000.0);
    }
    // The footprint of an idle sandbox.
    let id = env.containerd.new_id("idle");
    let ctr = env.ctr();
    let run = crate::e2e::run_bounded(
        ctr.run_command(
            KATA_RUNTIME,
            &["-d"],
            &env.image.name,
            &id,
            &["sleep", "600"],
        ),
        None,
        Duration::from_secs(180),
    )?;
    run.require_success()?;
    ctr.wait_task_status(&id, "RUNNING", Duration::from_secs(60))?;
    // Let the guest settle (page cache, agent threads) before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let fp = sandbox_footprint(&id);
    env.containerd.force_remove(&id);
    let fp = fp?;
    drop(env);
    let (pod_kata, pod_runc) = pod_start_samples(ctx)?;
    let (pk, pr) = (median(pod_kata), median(pod_runc));
    let (k, r) = (median(kata), median(runc));
    let report = StartReport {
        samples_each: SAMPLES,
        kata_run_true_ms_median: k,
        runc_run_true_ms_median: r,
        kata_over_runc_ratio: k / r,
        idle_sandbox_pss_kib: fp.total_pss_kib,
        idle_sandbox_processes: fp.processes.clone(),
        pod_samples_each: POD_SAMPLES,
        kata_pod_start_ms_median: pk,
        runc_pod_start_ms_median: pr,
        kata_over_runc_pod_start_ratio: pk / pr,
    };
    ctx.ui.info(&format!(
        "bench start (median of {SAMPLES}, alternated): ctr run --rm true: kata {k:.0} ms, runc {r:.0} ms, ratio {:.1}; idle sandbox PSS {} KiB",
        report.kata_over_runc_ratio, report.idle_sandbox_pss_kib
    ));
    ctx.ui.info(&format!(
        "bench start (median of {POD_SAMPLES}, alternated): CRI RunPodSandbox to first container RUNNING: kata {pk:.0} ms, runc {pr:.0} ms, ratio {:.1}",
        report.kata_over_runc_pod_start_ratio
    ));
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?)?;
    }
    Ok(())
}

/// RunPodSandbox to first container RUNNING through CRI, kata and runc
/// alternated in one containerd (one warm-up each, not counted).
fn pod_start_samples(ctx: &Ctx) -> Result<(Vec<f64>, Vec<f64>)> {
    let env = CriEnv::start(ctx, &CriArgs::default(), true)?;
    time_pod_start(ctx, &env, KATA_HANDLER, "warm-kata")?;
    time_pod_start(ctx, &env, RUNC_HANDLER, "warm-runc")?;
    let (mut kata, mut runc) = (Vec::new(), Vec::new());
    for i in 0..POD_SAMPLES {
        let k = time_pod_start(ctx, &env, KATA_HANDLER, &format!("k{i}"))?;
        let r = time_pod_start(ctx, &env, RUNC_HANDLER, &format!("r{i}"))?;
        ctx.ui.info(&format!(
            "  pod #{}: kata {} ms, runc {} ms",
            i + 1,
            k.as_millis(),
            r.as_millis()
        ));
        kata.push(k.as_secs_f64() * 1000.0);
        runc.push(r.as_secs_f64() * 1000.0);
    }
    Ok((kata, runc))
}
