//! `cargo xtask initrd --recipe NAME`: cpio newc, compressed, from the rootfs.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rootfs_builder::{write_initrd, Compression};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::graph::{Graph, StepId};
use crate::manifest::Kind;
use crate::{publish, rootfs};

const FORMAT: u32 = 1;

#[derive(Args, Clone)]
pub struct InitrdArgs {
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: CompressionArg,
    /// Carry the module flavour kernel's modules (`kernel --modules`) in
    /// /lib/modules; boot it with that kernel.
    #[arg(long)]
    pub kernel_modules: bool,
}

impl InitrdArgs {
    pub fn tree(&self) -> rootfs::GuestTree<'_> {
        rootfs::GuestTree {
            recipe: &self.recipe,
            kernel_modules: self.kernel_modules,
        }
    }
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

/// The initrd's file name in its step's entry.
pub const FILE: &str = "initrd";

/// The `initrd:<recipe>[+modules]:<compression>` step, after the recipe's rootfs.
pub fn add<'g>(g: &mut Graph<'g>, ctx: &'g Ctx, args: &InitrdArgs) -> Result<StepId> {
    let id = format!("initrd:{}:{}", args.tree().id(), args.compression.name());
    let mut i = StepInputs::new("initrd", FORMAT);
    i.value("compression", args.compression.name())
        .tree(
            &ctx.digests,
            "src.rootfs-builder",
            &ctx.root.join("rootfs-builder"),
        )?
        .value("source_date_epoch", ctx.epoch);
    let compression = args.compression.lib();
    rootfs::add_derived_file(g, ctx, &args.tree(), id, i, &[], move |tree, out| {
        write_initrd(tree, &out.join(FILE), compression, ctx.epoch)
    })
}

/// Builds (or takes from the cache) one initrd.
pub fn build(ctx: &Ctx, args: &InitrdArgs) -> Result<InitrdBuild> {
    let entry = crate::graph::build_one(ctx, |g| add(g, ctx, args))?;
    Ok(InitrdBuild {
        file: entry.path(FILE),
        key: entry.key.clone(),
    })
}

pub fn file_name(ctx: &Ctx, recipe: &str) -> String {
    format!("kata-{recipe}-{}.initrd", ctx.versions.version)
}

pub fn run(ctx: &Ctx, args: &InitrdArgs) -> Result<()> {
    let mut g = Graph::new();
    let id = add(&mut g, ctx, args)?;
    let Some(out) = g.run_command(ctx, id)? else {
        return Ok(());
    };
    publish::guest_asset(
        ctx,
        out.entry(id),
        FILE,
        &file_name(ctx, &args.tree().name()),
        if args.kernel_modules {
            "kata-containers-initrd-modules.img"
        } else {
            "kata-containers-initrd.img"
        },
        Kind::Initrd,
        &args.recipe,
    )
}
