//! `cargo xtask image --recipe NAME [--fs ext4|erofs] [--no-dax]`: a raw disk
//! image of the rootfs, with the NVDIMM/DAX header by default.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rootfs_builder::image::{build_image, Filesystem, ImageOptions};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::manifest::Kind;
use crate::plan::Plan;
use crate::{publish, rootfs};

const FORMAT: u32 = 1;

#[derive(Args, Clone)]
pub struct ImageArgs {
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
    #[arg(long, value_enum, default_value = "ext4")]
    pub fs: FsArg,
    /// Leave out the 2 MiB NVDIMM/DAX header.
    #[arg(long)]
    pub no_dax: bool,
    /// Round the image size up to a multiple of this many MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub align_mib: u64,
    /// Free space wanted inside the filesystem, in MiB.
    #[arg(long, default_value_t = 0)]
    pub free_mib: u64,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum FsArg {
    Ext4,
    Erofs,
}

impl FsArg {
    fn name(self) -> &'static str {
        match self {
            FsArg::Ext4 => "ext4",
            FsArg::Erofs => "erofs",
        }
    }
}

pub struct ImageBuild {
    pub file: PathBuf,
    pub key: String,
}

/// The builder's options for these arguments. The filesystem UUID and hash
/// seed are the builder's fixed defaults, so images are reproducible.
fn options(ctx: &Ctx, args: &ImageArgs) -> ImageOptions {
    let mut o = ImageOptions::new(ctx.epoch);
    o.fs = match args.fs {
        FsArg::Ext4 => Filesystem::Ext4,
        FsArg::Erofs => Filesystem::Erofs,
    };
    o.align_mib = args.align_mib;
    o.free_mib = args.free_mib;
    o.dax = !args.no_dax;
    o
}

pub fn inputs(ctx: &Ctx, args: &ImageArgs) -> Result<(Vec<StepInputs>, StepInputs)> {
    let (rootfs, agent, _) = rootfs::inputs(ctx, &args.recipe)?;
    let opts = options(ctx, args);
    let mut i = StepInputs::new("image", FORMAT);
    i.value("rootfs.key", rootfs.key())
        .value("fs", args.fs.name())
        .value("dax", !args.no_dax)
        .value("align_mib", args.align_mib)
        .value("free_mib", args.free_mib)
        .value("fs_uuid", &opts.fs_uuid)
        .value("hash_seed", &opts.hash_seed)
        .value(
            "mke2fs",
            crate::tools::version_line("mke2fs", "-V").unwrap_or_default(),
        )
        .value(
            "mkfs.erofs",
            crate::tools::version_line("mkfs.erofs", "--version").unwrap_or_default(),
        )
        .tree("src.rootfs-builder", &ctx.root.join("rootfs-builder"))?
        .value("source_date_epoch", ctx.epoch);
    Ok((vec![agent, rootfs], i))
}

pub fn build(ctx: &Ctx, args: &ImageArgs) -> Result<ImageBuild> {
    let (_, inputs) = inputs(ctx, args)?;
    let opts = options(ctx, args);
    let what = format!("image {} ({})", args.recipe, args.fs.name());
    let (file, key) =
        rootfs::derived_file(ctx, &args.recipe, &inputs, &what, "image", |tree, out| {
            build_image(tree, out, &opts).map(drop)
        })?;
    Ok(ImageBuild { file, key })
}

pub fn file_name(ctx: &Ctx, args: &ImageArgs) -> String {
    let mut name = format!("kata-{}-{}", args.recipe, ctx.versions.version);
    if args.fs != FsArg::Ext4 {
        name.push('-');
        name.push_str(args.fs.name());
    }
    if args.no_dax {
        name.push_str("-nodax");
    }
    name + ".image"
}

pub fn run(ctx: &Ctx, args: &ImageArgs) -> Result<()> {
    match args.fs {
        FsArg::Ext4 => crate::tools::require(
            "image",
            &[("mke2fs", "e2fsprogs"), ("debugfs", "e2fsprogs")],
        )?,
        FsArg::Erofs => crate::tools::require("image", &[("mkfs.erofs", "erofs-utils")])?,
    }
    rootfs::require_tools()?;
    let (before, inputs) = inputs(ctx, args)?;
    if Plan::of(ctx, before.iter().chain([&inputs])).show_if_dry_run(ctx)? {
        return Ok(());
    }
    ctx.ensure_dist_writable()?;
    let b = build(ctx, args)?;
    publish::guest_asset(
        ctx,
        &b.file,
        &b.key,
        &file_name(ctx, args),
        "kata-containers.img",
        Kind::Image,
        &args.recipe,
    )
}
