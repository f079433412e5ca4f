//! `bench kernel` and `bench boot`: figures that need a VM.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use runtime::hypervisor::Accel;
use serde::Serialize;

use crate::bench::median;
use crate::boot_phases::{median_phases, BootPhases};
use crate::kernel_boot::{boot_to_init, probe_initrd};
use crate::vmtest::{boot_and_drive, config, prepare, Guest, Media, CALL_TIMEOUT, SERVING_TIMEOUT};
use xtask::context::{Ctx, CACHE_ENV, DIST_ENV};

/// Boots per kernel for the time-to-init comparison (alternated).
const KERNEL_BOOTS: usize = 5;
const BOOTS: usize = 10;

#[derive(Serialize)]
struct KernelReport {
    cold_build_s: f64,
    bzimage_bytes: u64,
    vmlinux_bytes: u64,
    accel: Accel,
    boots_each: usize,
    ours_to_init_ms_median: f64,
    debian_cloud_to_init_ms_median: f64,
    ours_over_debian_ratio: f64,
}

/// Cold build in a private cache (the kernel step and its source unpack
/// only: downloads are reused from the user's cache), sizes, and time to
/// init of our kernel against Debian's cloud kernel, alternating.
pub fn kernel(ctx: &Ctx) -> Result<()> {
    let private = tempfile::Builder::new()
        .prefix("bench-kernel")
        .tempdir_in(ctx.root.join("target"))?;
    let inputs = ctx.cache()?.root().join("inputs");
    if inputs.exists() {
        std::os::unix::fs::symlink(&inputs, private.path().join("inputs"))?;
    }
    ctx.ui
        .info("bench kernel: cold build in a private cache (about 10 minutes on 2 cores)");
    let t = Instant::now();
    let out = Command::new(crate::pipeline_exe(ctx)?)
        .args(["kernel", "--versions"])
        .arg(&ctx.versions_path)
        .env(CACHE_ENV, private.path())
        .env(DIST_ENV, private.path().join("dist"))
        .current_dir(&ctx.root)
        .status()?;
    if !out.success() {
        bail!("cold kernel build failed");
    }
    let cold_build_s = t.elapsed().as_secs_f64();
    let k = xtask::kernel::build(ctx, &xtask::kernel::KernelArgs::default())?;
    let reference = ctx.debian_member("reference_kernel", &ctx.versions.reference_kernel.debian)?;
    let work = tempfile::tempdir()?;
    let initrd = work.path().join("probe.initrd");
    probe_initrd(ctx, &initrd)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut accel = Accel::Auto;
    for i in 0..KERNEL_BOOTS {
        let a = boot_to_init(ctx, &k.bzimage(), &initrd, "bench-ours", Accel::Auto)?;
        let b = boot_to_init(ctx, &reference, &initrd, "bench-debian", a.accel)?;
        accel = a.accel;
        ctx.ui.info(&format!(
            "  boot #{}: ours {} ms, debian {} ms",
            i + 1,
            a.to_init.as_millis(),
            b.to_init.as_millis()
        ));
        ours.push(a.to_init.as_secs_f64() * 1000.0);
        theirs.push(b.to_init.as_secs_f64() * 1000.0);
    }
    let (o, d) = (median(ours), median(theirs));
    let r = KernelReport {
        cold_build_s,
        bzimage_bytes: std::fs::metadata(k.bzimage())?.len(),
        vmlinux_bytes: std::fs::metadata(k.dir.join("vmlinux"))?.len(),
        accel,
        boots_each: KERNEL_BOOTS,
        ours_to_init_ms_median: o,
        debian_cloud_to_init_ms_median: d,
        ours_over_debian_ratio: o / d,
    };
    ctx.ui.info(&format!(
        "bench kernel: cold build {:.0} s; bzImage {} B, vmlinux {} B; to init ({:?}, median of {}): ours {:.0} ms, Debian cloud {:.0} ms, ratio {:.2}",
        r.cold_build_s, r.bzimage_bytes, r.vmlinux_bytes, r.accel, KERNEL_BOOTS, o, d, r.ours_over_debian_ratio
    ));
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r)?)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct BootReport {
    accel: Accel,
    boots_each: usize,
    initrd_to_serving_ms_median: f64,
    image_to_serving_ms_median: f64,
    image_over_initrd_ratio: f64,
    /// The debian recipe's DAX image: systemd is init and starts the agent.
    systemd_image_to_serving_ms_median: f64,
    /// systemd guest over agent-as-init guest, both DAX images.
    systemd_over_agent_init_ratio: f64,
    /// Every guest and boot way measured, the three above first.
    guests: Vec<BootVariant>,
    /// The minimal initrd started from a VM template (`[factory]`) instead
    /// of booted: from `Vm::start` (so including the copy of the template's
    /// memory, which comes before QEMU's spawn) to SERVING, alternated with
    /// the boots above.
    templated_initrd_to_serving_ms_median: f64,
    templated_over_initrd_ratio: f64,
    templated_to_serving_ms: Vec<f64>,
    /// What making the template took (its guest's boot, then the save).
    template_boot_ms: u64,
    template_save_ms: u64,
    template_state_bytes: u64,
    agent_bytes: u64,
}

#[derive(Serialize)]
struct BootVariant {
    name: &'static str,
    to_serving_ms_median: f64,
    /// This over the shipped minimal initrd's median.
    over_initrd_ratio: f64,
    /// Every sample, in run order (milliseconds).
    to_serving_ms: Vec<f64>,
    /// Each phase's median (ms since QEMU's spawn).
    phases_median: Option<BootPhases>,
}

/// QEMU start to the agent's first SERVING, alternating the guests so all
/// see the same machine load: the minimal initrd, the minimal DAX image
/// (agent as init) and the debian DAX image (systemd as init), all booted
/// as shipped (vmlinux through PVH from SeaBIOS); then the minimal initrd
/// booted the two other ways measured: as the bzImage (shipped before) and
/// from qboot (faster, but no PCI hotplug, so not shipped).
pub fn boot(ctx: &Ctx) -> Result<()> {
    let initrd = prepare(ctx, Media::Initrd, "minimal")?;
    let bzimage = Guest {
        kernel: xtask::kernel::build(ctx, &xtask::kernel::KernelArgs::default())?.bzimage(),
        ..initrd.clone()
    };
    let qboot = Guest {
        firmware: Some(runtime::hypervisor::QBOOT_FIRMWARE.into()),
        ..initrd.clone()
    };
    let guests: [(&'static str, Guest); 5] = [
        ("initrd", initrd),
        ("DAX image", prepare(ctx, Media::Image, "minimal")?),
        ("systemd image", prepare(ctx, Media::Image, "debian")?),
        ("initrd as bzImage", bzimage),
        ("initrd from qboot", qboot),
    ];
    let mut samples: [Vec<f64>; 5] = Default::default();
    let mut phases: [Vec<BootPhases>; 5] = Default::default();
    let mut accel = Accel::Auto;
    // The template lives on a tmpfs, as `kata-runtime factory init` puts it.
    let template_dir = tempfile::Builder::new()
        .prefix("kata-bench-template-")
        .tempdir_in("/dev/shm")?;
    let template = runtime::hypervisor::template::create(
        &config(&guests[0].1, "template", accel, &[]),
        template_dir.path(),
        SERVING_TIMEOUT,
    )?;
    let mut templated = Vec::new();
    for i in 0..BOOTS {
        let mut line = format!("  boot #{}:", i + 1);
        for (k, (name, guest)) in guests.iter().enumerate() {
            let report = boot_and_drive(ctx, guest, accel)?;
            accel = report.accel;
            line.push_str(&format!(" {name} {} ms,", report.boot_to_serving_ms));
            samples[k].push(report.boot_to_serving_ms as f64);
            phases[k].extend(report.phases);
        }
        let t = clone_to_serving(&guests[0].1, template_dir.path(), accel)?;
        line.push_str(&format!(" initrd from a template {t:.0} ms"));
        templated.push(t);
        ctx.ui.info(line.trim_end_matches(','));
    }
    for ((name, _), p) in guests.iter().zip(&phases) {
        if p.len() != BOOTS {
            bail!(
                "bench boot: only {} of {BOOTS} {name} boots showed the agent's stamped \"{}\" line on the console before SERVING; the phases need it",
                p.len(),
                crate::boot_phases::AGENT_READY
            );
        }
    }
    let initrd_median = median(samples[0].clone());
    let variants: Vec<BootVariant> = guests
        .iter()
        .zip(samples)
        .zip(phases)
        .map(|(((name, _), s), p)| {
            let m = median(s.clone());
            BootVariant {
                name,
                to_serving_ms_median: m,
                over_initrd_ratio: m / initrd_median,
                to_serving_ms: s,
                phases_median: median_phases(&p),
            }
        })
        .collect();
    let agent = xtask::agent::build(ctx)?;
    let (ma, mb, mc) = (
        variants[0].to_serving_ms_median,
        variants[1].to_serving_ms_median,
        variants[2].to_serving_ms_median,
    );
    let templated_median = median(templated.clone());
    let r = BootReport {
        templated_initrd_to_serving_ms_median: templated_median,
        templated_over_initrd_ratio: templated_median / ma,
        templated_to_serving_ms: templated,
        template_boot_ms: template.boot_ms,
        template_save_ms: template.save_ms,
        template_state_bytes: template.state_bytes,
        accel,
        boots_each: BOOTS,
        initrd_to_serving_ms_median: ma,
        image_to_serving_ms_median: mb,
        image_over_initrd_ratio: mb / ma,
        systemd_image_to_serving_ms_median: mc,
        systemd_over_agent_init_ratio: mc / mb,
        agent_bytes: std::fs::metadata(&agent.binary)?.len(),
        guests: variants,
    };
    ctx.ui.info(&format!(
        "bench boot ({:?}, median of {BOOTS}): QEMU start to SERVING: initrd {ma:.0} ms, DAX image {mb:.0} ms (ratio {:.2}), systemd (debian) DAX image {mc:.0} ms (over agent-as-init {:.2}); agent {} B",
        r.accel, r.image_over_initrd_ratio, r.systemd_over_agent_init_ratio, r.agent_bytes
    ));
    ctx.ui.info(&format!(
        "  initrd from a template: {:.0} ms ({:.2}x the initrd), from Vm::start with the memory copy; the template took {} ms to boot and {} ms to save ({} bytes of state)",
        r.templated_initrd_to_serving_ms_median,
        r.templated_over_initrd_ratio,
        r.template_boot_ms,
        r.template_save_ms,
        r.template_state_bytes
    ));
    for v in &r.guests {
        ctx.ui.info(&format!(
            "  {}: {:.0} ms ({:.2}x the initrd){}",
            v.name,
            v.to_serving_ms_median,
            v.over_initrd_ratio,
            v.phases_median
                .as_ref()
                .map(|p| format!("; phases (medians, since QEMU's spawn): {}", p.describe()))
                .unwrap_or_default()
        ));
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r)?)?;
    }
    Ok(())
}

/// One sandbox VM started from the template in `dir`: milliseconds from
/// `Vm::start` (the template check and the memory copy come before QEMU's
/// spawn) to the agent's SERVING.
fn clone_to_serving(guest: &Guest, dir: &std::path::Path, accel: Accel) -> Result<f64> {
    let mut cfg = config(guest, "clone", accel, &[]);
    cfg.template = Some(runtime::hypervisor::template::TemplateUse::Clone(
        dir.to_owned(),
    ));
    let t = Instant::now();
    let mut vm = runtime::hypervisor::Vm::start(cfg).context("start a VM from the template")?;
    if vm.cloned_from().is_none() {
        bail!("the VM was booted, not cloned from the template");
    }
    let address = vm
        .agent_address()
        .context("the clone has no agent channel")?;
    runtime::agent_client::AgentClient::wait_serving(
        &address,
        SERVING_TIMEOUT,
        CALL_TIMEOUT,
        || vm.check_alive(),
    )
    .context("the clone's agent")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    vm.shutdown()?;
    Ok(ms)
}
