//! `bench build`: how long the image pipeline takes when nothing changed
//! (pure cache hits) and when the rootfs, initrd and image are rebuilt with
//! the agent cached; and the sizes of agent, initrd and image. The same
//! for the debian guest (mmdebstrap and systemd): its image warm and rebuilt
//! (rootfs and image) with the agent and the `.deb`s cached.
//!
//! Each sample runs the real `cargo xtask` binary (the pipeline's `xtask`,
//! see [`crate::pipeline_exe`]) as a child against a private cache dir, so
//! caches of the user are untouched.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::bench::median;
use xtask::cache::remove_step_entries;
use xtask::context::{Ctx, CACHE_ENV, DIST_ENV};

const SAMPLES: usize = 5;

#[derive(Serialize)]
struct Report {
    samples: usize,
    warm_noop_image_ms_median: f64,
    cold_initrd_and_image_ms_median: f64,
    cold_over_warm_ratio: f64,
    agent_bytes: u64,
    agent_budget_bytes: u64,
    agent_within_budget: bool,
    initrd_bytes: u64,
    image_bytes: u64,
    debian_warm_noop_image_ms_median: f64,
    debian_cold_rootfs_and_image_ms_median: f64,
    debian_image_bytes: u64,
    /// What the debian image's ext4 holds (allocated blocks aside).
    debian_rootfs_bytes: u64,
}

fn xtask(ctx: &Ctx, cache: &Path, args: &[&str]) -> Result<f64> {
    let exe = crate::pipeline_exe(ctx)?;
    let start = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .arg("--versions")
        .arg(&ctx.versions_path)
        .env(CACHE_ENV, cache)
        .env(DIST_ENV, cache.join("dist"))
        .current_dir(&ctx.root)
        .output()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "`cargo xtask {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let cache = ctx.root.join("target").join("bench-cache");
    // Seed: agent (and everything else) once.
    ctx.ui
        .info("bench build: seeding a private cache (agent, rootfs, initrd, image)");
    xtask(ctx, &cache, &["initrd", "--recipe", "minimal"])?;
    xtask(ctx, &cache, &["image", "--recipe", "minimal"])?;

    let mut warm = Vec::new();
    for i in 0..SAMPLES {
        warm.push(xtask(ctx, &cache, &["image", "--recipe", "minimal"])?);
        ctx.ui
            .info(&format!("  warm no-op image #{}: {:.0} ms", i + 1, warm[i]));
    }
    let mut cold = Vec::new();
    for i in 0..SAMPLES {
        // Drop every step but the agent (and the verified downloads).
        for step in ["rootfs", "initrd", "image"] {
            remove_step_entries(&cache, step)?;
        }
        let a = xtask(ctx, &cache, &["initrd", "--recipe", "minimal"])?;
        let b = xtask(ctx, &cache, &["image", "--recipe", "minimal"])?;
        cold.push(a + b);
        ctx.ui
            .info(&format!("  cold initrd+image #{}: {:.0} ms", i + 1, a + b));
    }
    // The debian guest: seeded (its .debs fetched once), then warm no-ops
    // and rebuilds of its rootfs and image.
    xtask(ctx, &cache, &["image", "--recipe", "debian"])?;
    let mut debian_warm = Vec::new();
    for i in 0..SAMPLES {
        debian_warm.push(xtask(ctx, &cache, &["image", "--recipe", "debian"])?);
        ctx.ui.info(&format!(
            "  warm no-op debian image #{}: {:.0} ms",
            i + 1,
            debian_warm[i]
        ));
    }
    let mut debian_cold = Vec::new();
    for i in 0..SAMPLES {
        for step in ["rootfs", "image"] {
            remove_step_entries(&cache, step)?;
        }
        debian_cold.push(xtask(ctx, &cache, &["image", "--recipe", "debian"])?);
        ctx.ui.info(&format!(
            "  cold debian rootfs+image #{}: {:.0} ms",
            i + 1,
            debian_cold[i]
        ));
    }
    xtask(ctx, &cache, &["rootfs", "--recipe", "debian"])?;
    let debian_rootfs_bytes =
        host_support::fs::tree_bytes(&cache.join("dist").join("rootfs-debian"))?;
    let dist = cache.join("dist");
    let size = |name: &str| -> Result<u64> {
        Ok(std::fs::metadata(dist.join(name))
            .with_context(|| format!("{name} in {}", dist.display()))?
            .len())
    };
    let warm_m = median(warm);
    let cold_m = median(cold);
    let agent_bytes = std::fs::metadata(
        xtask::agent::agent_target_dir(ctx)
            .join(&ctx.versions.rust.musl_target)
            .join(xtask::agent::PROFILE)
            .join("kata-agent"),
    )?
    .len();
    let report = Report {
        samples: SAMPLES,
        warm_noop_image_ms_median: warm_m,
        cold_initrd_and_image_ms_median: cold_m,
        cold_over_warm_ratio: cold_m / warm_m,
        agent_bytes,
        agent_budget_bytes: xtask::agent::SIZE_BUDGET,
        agent_within_budget: agent_bytes <= xtask::agent::SIZE_BUDGET,
        initrd_bytes: size("kata-containers-initrd.img")?,
        image_bytes: size(&format!("kata-minimal-{}.image", ctx.versions.version))?,
        debian_warm_noop_image_ms_median: median(debian_warm),
        debian_cold_rootfs_and_image_ms_median: median(debian_cold),
        debian_image_bytes: size(&format!("kata-debian-{}.image", ctx.versions.version))?,
        debian_rootfs_bytes,
    };
    ctx.ui.info(&format!(
        "bench build (median of {SAMPLES}): warm no-op image {:.0} ms; cold initrd+image {:.0} ms ({:.1}x); agent {}, initrd {} B, image {} B",
        report.warm_noop_image_ms_median,
        report.cold_initrd_and_image_ms_median,
        report.cold_over_warm_ratio,
        xtask::agent::describe_size(report.agent_bytes),
        report.initrd_bytes,
        report.image_bytes
    ));
    ctx.ui.info(&format!(
        "bench build (median of {SAMPLES}): debian (systemd) guest: warm no-op image {:.0} ms; cold rootfs+image {:.0} ms (.debs cached); image {} B, rootfs {} B",
        report.debian_warm_noop_image_ms_median,
        report.debian_cold_rootfs_and_image_ms_median,
        report.debian_image_bytes,
        report.debian_rootfs_bytes
    ));
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?)?;
    }
    Ok(())
}
