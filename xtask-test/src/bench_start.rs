//! `bench start`: container start latency through a real containerd, this
//! runtime against runc, and the memory of one idle sandbox.
//!
//! `ctr run --rm IMAGE true` is timed end to end (create, start, exit,
//! delete), alternating kata and runc in one containerd so both see the same
//! machine load; the ratio is of the two medians of that one run. The
//! footprint is the PSS of the shim and its descendants (QEMU, virtiofsd,
//! vhost-device-vsock) while a `sleep` container idles.
//!
//! The kata figures come twice: with the build's configuration (each
//! sandbox boots its VM) and with `[factory] enable_template = true` (each
//! starts from the template `kata-runtime factory init` made), alternated
//! with runc in one containerd; the run fails unless every templated start
//! was really cloned.
//!
//! Then the same through CRI (cri/, containerd's CRI plugin and CNI in a
//! test-made netns): RunPodSandbox until the pod's first container is
//! RUNNING, handlers kata and runc alternated in one containerd, medians
//! and their ratio of that one run. Each pod's first container joins the
//! pod's sandbox, so this also runs the shim's `start` for a container
//! joining a pod (the sandbox shim's address, nothing spawned). The
//! containerd log of that run is scanned for the shim's teardown warnings,
//! which are counted in the report.

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
/// Idle sandboxes running together for the shared-footprint figure.
const FOOTPRINT_MANY: usize = 5;

#[derive(Serialize)]
struct StartReport {
    samples_each: usize,
    /// The build's configuration: each sandbox boots its VM.
    kata_run_true_ms_median: f64,
    /// The same configuration with `[factory] enable_template = true`:
    /// each sandbox starts from the template `kata-runtime factory init` made.
    kata_templated_run_true_ms_median: f64,
    runc_run_true_ms_median: f64,
    kata_over_runc_ratio: f64,
    kata_templated_over_runc_ratio: f64,
    /// PSS of one idle sandbox (shim, QEMU, virtiofsd, vsock daemon), alone.
    idle_sandbox_pss_kib: u64,
    idle_sandbox_processes: Vec<(u32, String, u64)>,
    /// How many idle sandboxes ran at once for the "each of many" figures.
    idle_sandboxes_together: usize,
    /// Their PSS summed, divided by their number.
    idle_sandbox_pss_kib_each_of_many: u64,
    /// Each one's PSS, in start order.
    idle_sandboxes_pss_kib: Vec<u64>,
    /// The same for sandboxes started from the template; their figures
    /// include the part of their memory file no process maps.
    templated_idle_sandbox_pss_kib: u64,
    templated_idle_sandbox_processes: Vec<(u32, String, u64)>,
    templated_idle_sandbox_pss_kib_each_of_many: u64,
    templated_idle_sandboxes_pss_kib: Vec<u64>,
    pod_samples_each: usize,
    kata_pod_start_ms_median: f64,
    runc_pod_start_ms_median: f64,
    kata_over_runc_pod_start_ratio: f64,
    /// Every sample, in run order (milliseconds).
    kata_run_true_ms: Vec<f64>,
    kata_templated_run_true_ms: Vec<f64>,
    runc_run_true_ms: Vec<f64>,
    kata_pod_start_ms: Vec<f64>,
    runc_pod_start_ms: Vec<f64>,
    /// "teardown incomplete" lines in the CRI run's containerd log.
    pod_teardown_warnings: usize,
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let opts = EnvOptions {
        kata: true,
        shim: None,
        media: Media::Initrd,
        recipe: "minimal".into(),
        keep: false,
        log_name: "bench-start",
        template: Some(crate::e2e::template::template_dir()),
    };
    let env = E2eEnv::start(ctx, &opts)?;
    let templated_config = env.kata_config.clone().expect("kata configuration");
    let factory = crate::e2e::template::Factory::init(
        ctx,
        &env,
        opts.template.as_deref().expect("template dir"),
        &templated_config,
    )?;
    // The build's configuration as it is: templating off. Named per run
    // (`ctr run --runtime-config-path`), so both kinds share one containerd.
    let cold_config = templated_config.with_file_name("configuration-cold.toml");
    let mut file = runtime::config::load_file(&templated_config)?.to_file();
    file.factory.enable_template = false;
    std::fs::write(&cold_config, file.to_toml()?)?;
    let cold_config_s = cold_config.display().to_string();
    let cold: &[&str] = &["--runtime-config-path", &cold_config_s];
    // One of each first: page cache and image unpacking are not what we measure.
    env.time_run_true(KATA_RUNTIME, "warm-kata", cold)?;
    env.time_run_true(KATA_RUNTIME, "warm-templated", &[])?;
    env.time_run_true(RUNC_RUNTIME, "warm-runc", &[])?;
    let (mut kata, mut templated, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let k = env.time_run_true(KATA_RUNTIME, &format!("k{i}"), cold)?;
        let t = env.time_run_true(KATA_RUNTIME, &format!("t{i}"), &[])?;
        let r = env.time_run_true(RUNC_RUNTIME, &format!("r{i}"), &[])?;
        ctx.ui.info(&format!(
            "  #{}: kata {} ms, kata templated {} ms, runc {} ms",
            i + 1,
            k.as_millis(),
            t.as_millis(),
            r.as_millis()
        ));
        kata.push(k.as_secs_f64() * 1000.0);
        templated.push(t.as_secs_f64() * 1000.0);
        runc.push(r.as_secs_f64() * 1000.0);
    }
    // The footprint of one idle sandbox, then of FOOTPRINT_MANY at once
    // (what they share, QEMU's binary and libraries, is split between
    // them), booted and then templated.
    let measure = |flags: &[&str]| -> Result<_> {
        let one = idle_footprints(&env, 1, flags)?;
        // The first sandbox's processes must be gone, or pages they still
        // map would lower the next figure.
        crate::e2e::wait_no_leftovers(
            &env.containerd,
            Duration::from_secs(60),
            "the single idle sandbox",
        )?;
        let many = idle_footprints(&env, FOOTPRINT_MANY, flags)?;
        crate::e2e::wait_no_leftovers(
            &env.containerd,
            Duration::from_secs(60),
            "the idle sandboxes",
        )?;
        Ok((one.into_iter().next().expect("one footprint"), many))
    };
    let (fp, many) = measure(cold)?;
    let (tfp, tmany) = measure(&[])?;
    let cloned = std::fs::read_to_string(&env.containerd.log)?
        .matches("cloned from the template in")
        .count();
    // Warm-up, samples, 1 + FOOTPRINT_MANY idle: all templated starts cloned.
    let templated_starts = 1 + SAMPLES + 1 + FOOTPRINT_MANY;
    if cloned != templated_starts {
        anyhow::bail!(
            "{cloned} of the {templated_starts} templated starts were cloned from the template (see {})",
            env.containerd.log.display()
        );
    }
    drop(factory);
    drop(env);
    let each = |v: &[crate::e2e::SandboxFootprint]| {
        v.iter().map(|f| f.total_pss_kib).sum::<u64>() / v.len() as u64
    };
    let pods = pod_start_samples(ctx)?;
    let (pk, pr) = (median(pods.kata.clone()), median(pods.runc.clone()));
    let (k, t, r) = (
        median(kata.clone()),
        median(templated.clone()),
        median(runc.clone()),
    );
    let report = StartReport {
        samples_each: SAMPLES,
        kata_run_true_ms_median: k,
        kata_templated_run_true_ms_median: t,
        runc_run_true_ms_median: r,
        kata_over_runc_ratio: k / r,
        kata_templated_over_runc_ratio: t / r,
        idle_sandbox_pss_kib: fp.total_pss_kib,
        idle_sandbox_processes: fp.processes.clone(),
        idle_sandboxes_together: FOOTPRINT_MANY,
        idle_sandbox_pss_kib_each_of_many: each(&many),
        idle_sandboxes_pss_kib: many.iter().map(|f| f.total_pss_kib).collect(),
        templated_idle_sandbox_pss_kib: tfp.total_pss_kib,
        templated_idle_sandbox_processes: tfp.processes.clone(),
        templated_idle_sandbox_pss_kib_each_of_many: each(&tmany),
        templated_idle_sandboxes_pss_kib: tmany.iter().map(|f| f.total_pss_kib).collect(),
        pod_samples_each: POD_SAMPLES,
        kata_pod_start_ms_median: pk,
        runc_pod_start_ms_median: pr,
        kata_over_runc_pod_start_ratio: pk / pr,
        kata_run_true_ms: kata,
        kata_templated_run_true_ms: templated,
        runc_run_true_ms: runc,
        kata_pod_start_ms: pods.kata,
        runc_pod_start_ms: pods.runc,
        pod_teardown_warnings: pods.teardown_warnings.len(),
    };
    ctx.ui.info(&format!(
        "bench start (median of {SAMPLES}, alternated): ctr run --rm true: kata {k:.0} ms (ratio {:.1}), kata templated {t:.0} ms (ratio {:.1}), runc {r:.0} ms",
        report.kata_over_runc_ratio, report.kata_templated_over_runc_ratio
    ));
    ctx.ui.info(&format!(
        "bench start: idle sandbox PSS booted {} KiB alone, {} KiB each of {FOOTPRINT_MANY}; templated {} KiB alone, {} KiB each of {FOOTPRINT_MANY}",
        report.idle_sandbox_pss_kib,
        report.idle_sandbox_pss_kib_each_of_many,
        report.templated_idle_sandbox_pss_kib,
        report.templated_idle_sandbox_pss_kib_each_of_many
    ));
    ctx.ui.info(&format!(
        "bench start (median of {POD_SAMPLES}, alternated): CRI RunPodSandbox to first container RUNNING: kata {pk:.0} ms, runc {pr:.0} ms, ratio {:.1}",
        report.kata_over_runc_pod_start_ratio
    ));
    for w in &pods.teardown_warnings {
        ctx.ui
            .info(&format!("bench start: warning: shim teardown: {w}"));
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?)?;
    }
    Ok(())
}

struct PodSamples {
    kata: Vec<f64>,
    runc: Vec<f64>,
    teardown_warnings: Vec<String>,
}

/// The shim's "teardown incomplete" warnings in a containerd log.
fn teardown_warnings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("teardown incomplete"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// RunPodSandbox to first container RUNNING through CRI, kata and runc
/// alternated in one containerd (one warm-up each, not counted).
fn pod_start_samples(ctx: &Ctx) -> Result<PodSamples> {
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
    let log = std::fs::read_to_string(&env.containerd.log).unwrap_or_default();
    Ok(PodSamples {
        kata,
        runc,
        teardown_warnings: teardown_warnings(&log),
    })
}

/// Starts `n` idle (`sleep`) kata containers, each its own sandbox, waits
/// until all run and the guests settle, measures each one's footprint and
/// removes them.
fn idle_footprints(
    env: &E2eEnv,
    n: usize,
    flags: &[&str],
) -> Result<Vec<crate::e2e::SandboxFootprint>> {
    let ctr = env.ctr();
    let ids: Vec<String> = (0..n)
        .map(|i| {
            env.containerd
                .new_id(&format!("idle{n}-{}{i}", flags.len()))
        })
        .collect();
    let measured = (|| {
        for id in &ids {
            crate::e2e::run_bounded(
                ctr.run_command(
                    KATA_RUNTIME,
                    &[&["-d"][..], flags].concat(),
                    &env.image.name,
                    id,
                    &["sleep", "600"],
                ),
                None,
                Duration::from_secs(180),
            )?
            .require_success()?;
            ctr.wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
        }
        // Let the guests settle (page cache, agent threads) before measuring.
        std::thread::sleep(Duration::from_secs(3));
        ids.iter().map(|id| sandbox_footprint(id)).collect()
    })();
    for id in &ids {
        env.containerd.force_remove(id);
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::teardown_warnings;

    #[test]
    fn teardown_warnings_are_found_in_the_log() {
        let log = "time=\"t\" level=info msg=\"start x\"\n\
                   time=\"t\" level=warn msg=\"container c: delete: teardown incomplete: cannot stop QEMU (pid 1): No child processes (os error 10)\"\n";
        let w = teardown_warnings(log);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("cannot stop QEMU"));
        assert!(teardown_warnings("").is_empty());
    }
}
