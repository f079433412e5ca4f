//! `cargo xtask initrd --recipe NAME`: cpio newc, compressed, from the rootfs.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rootfs_builder::{write_initrd, Compression};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::manifest::Kind;
use crate::plan::Plan;
use crate::{publish, rootfs};

const FORMAT: u32 = 1;

#[derive(Args, Clone)]
pub struct InitrdArgs {
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: CompressionArg,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

impl CompressionArg {
    fn lib(self) -> Compression {
        match self {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
    fn name(self) -> &'static str {
        match self {
            CompressionArg::Gzip => "gzip",
            CompressionArg::Zstd => "zstd",
        }
    }
}

pub struct InitrdBuild {
    pub file: PathBuf,
    pub key: String,
}

pub fn inputs(ctx: &Ctx, args: &InitrdArgs) -> Result<(Vec<StepInputs>, StepInputs)> {
    let (rootfs, agent, _) = rootfs::inputs(ctx, &args.recipe)?;
    let mut i = StepInputs::new("initrd", FORMAT);
    i.value("rootfs.key", rootfs.key())
        .value("compression", args.compression.name())
        .tree("src.rootfs-builder", &ctx.root.join("rootfs-builder"))?
        .value("source_date_epoch", ctx.epoch);
    Ok((vec![agent, rootfs], i))
}

pub fn build(ctx: &Ctx, args: &InitrdArgs) -> Result<InitrdBuild> {
    let (_, inputs) = inputs(ctx, args)?;
    let what = format!("initrd {}", args.recipe);
    let (file, key) =
        rootfs::derived_file(ctx, &args.recipe, &inputs, &what, "initrd", |tree, out| {
            write_initrd(tree, out, args.compression.lib(), ctx.epoch)
        })?;
    Ok(InitrdBuild { file, key })
}

pub fn file_name(ctx: &Ctx, recipe: &str) -> String {
    format!("kata-{recipe}-{}.initrd", ctx.versions.version)
}

pub fn run(ctx: &Ctx, args: &InitrdArgs) -> Result<()> {
    rootfs::require_tools()?;
    let (before, inputs) = inputs(ctx, args)?;
    if Plan::of(ctx, before.iter().chain([&inputs])).show_if_dry_run(ctx)? {
        return Ok(());
    }
    ctx.ensure_dist_writable()?;
    let b = build(ctx, args)?;
    let name = file_name(ctx, &args.recipe);
    publish::guest_asset(
        ctx,
        &b.file,
        &b.key,
        &name,
        "kata-containers-initrd.img",
        Kind::Initrd,
        &args.recipe,
    )
}
