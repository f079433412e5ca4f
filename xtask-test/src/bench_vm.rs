//! `bench kernel` and `bench boot`: figures that need a VM.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use runtime::hypervisor::Accel;
use serde::Serialize;

use crate::bench::median;
use crate::boot_phases::{median_phases, BootPhases};
use crate::kernel_boot::{boot_to_init, probe_initrd};
use crate::vmtest::{boot_and_drive, prepare, Media};
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
    /// Every sample, in run order (milliseconds).
    initrd_to_serving_ms: Vec<f64>,
    image_to_serving_ms: Vec<f64>,
    systemd_image_to_serving_ms: Vec<f64>,
    /// Each phase's median (ms since QEMU's spawn), per guest.
    initrd_phases_median: Option<BootPhases>,
    image_phases_median: Option<BootPhases>,
    systemd_image_phases_median: Option<BootPhases>,
    agent_bytes: u64,
}

/// QEMU start to the agent's first SERVING, alternating the minimal
/// initrd, the minimal DAX image (agent as init) and the debian DAX image
/// (systemd as init) so all see the same machine load.
pub fn boot(ctx: &Ctx) -> Result<()> {
    let initrd = prepare(ctx, Media::Initrd, "minimal")?;
    let image = prepare(ctx, Media::Image, "minimal")?;
    let systemd = prepare(ctx, Media::Image, "debian")?;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut phases: [Vec<BootPhases>; 3] = Default::default();
    let mut accel = Accel::Auto;
    for i in 0..BOOTS {
        let x = boot_and_drive(ctx, &initrd, Accel::Auto)?;
        let y = boot_and_drive(ctx, &image, x.accel)?;
        let z = boot_and_drive(ctx, &systemd, x.accel)?;
        accel = x.accel;
        ctx.ui.info(&format!(
            "  boot #{}: initrd {} ms, image {} ms, systemd image {} ms",
            i + 1,
            x.boot_to_serving_ms,
            y.boot_to_serving_ms,
            z.boot_to_serving_ms
        ));
        a.push(x.boot_to_serving_ms as f64);
        b.push(y.boot_to_serving_ms as f64);
        c.push(z.boot_to_serving_ms as f64);
        for (samples, report) in phases.iter_mut().zip([&x, &y, &z]) {
            samples.extend(report.phases);
        }
    }
    for (samples, what) in phases.iter().zip(["initrd", "DAX image", "systemd image"]) {
        if samples.len() != BOOTS {
            bail!(
                "bench boot: only {} of {BOOTS} {what} boots showed the agent's stamped \"{}\" line on the console before SERVING; the phases need it",
                samples.len(),
                crate::boot_phases::AGENT_READY
            );
        }
    }
    let [pa, pb, pc] = phases.map(|s| median_phases(&s));
    let agent = xtask::agent::build(ctx)?;
    let (ma, mb, mc) = (median(a.clone()), median(b.clone()), median(c.clone()));
    let r = BootReport {
        accel,
        boots_each: BOOTS,
        initrd_to_serving_ms_median: ma,
        image_to_serving_ms_median: mb,
        image_over_initrd_ratio: mb / ma,
        systemd_image_to_serving_ms_median: mc,
        systemd_over_agent_init_ratio: mc / mb,
        initrd_to_serving_ms: a,
        image_to_serving_ms: b,
        systemd_image_to_serving_ms: c,
        initrd_phases_median: pa,
        image_phases_median: pb,
        systemd_image_phases_median: pc,
        agent_bytes: std::fs::metadata(&agent.binary)?.len(),
    };
    ctx.ui.info(&format!(
        "bench boot ({:?}, median of {BOOTS}): QEMU start to SERVING: initrd {ma:.0} ms, DAX image {mb:.0} ms (ratio {:.2}), systemd (debian) DAX image {mc:.0} ms (over agent-as-init {:.2}); agent {} B",
        r.accel, r.image_over_initrd_ratio, r.systemd_over_agent_init_ratio, r.agent_bytes
    ));
    for (what, p) in [
        ("initrd", &r.initrd_phases_median),
        ("DAX image", &r.image_phases_median),
        ("systemd image", &r.systemd_image_phases_median),
    ] {
        if let Some(p) = p {
            ctx.ui.info(&format!(
                "  {what} phases (medians, since QEMU's spawn): {}",
                p.describe()
            ));
        }
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r)?)?;
    }
    Ok(())
}
