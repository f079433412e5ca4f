//! `cargo xtask image --recipe NAME [--fs ext4|erofs] [--no-dax]`: a raw disk
//! image of the rootfs, with the NVDIMM/DAX header by default.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rootfs_builder::image::{build_image, Filesystem, ImageOptions};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::graph::{Graph, StepId};
use crate::manifest::Kind;
use crate::{host_tools, publish, rootfs};

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
    /// Add a dm-verity hash tree as partition 2 (no verity superblock);
    /// the manifest records the `kernel_verity_params` that boot it.
    #[arg(long)]
    pub verity: bool,
    /// Carry the module flavour kernel's modules (`kernel --modules`) in
    /// /lib/modules; boot it with that kernel.
    #[arg(long)]
    pub kernel_modules: bool,
}

impl ImageArgs {
    /// What `cargo xtask image ARGS...` builds, the command's defaults
    /// included (parsed by the command's own definition, so they cannot
    /// drift apart).
    pub fn from_args(args: &[&str]) -> Result<Self> {
        #[derive(clap::Parser)]
        struct Image {
            #[command(flatten)]
            args: ImageArgs,
        }
        let parsed = <Image as clap::Parser>::try_parse_from(
            std::iter::once("image").chain(args.iter().copied()),
        )?;
        Ok(parsed.args)
    }

    /// `cargo xtask image --recipe R`: the DAX ext4 image a release ships.
    pub fn for_recipe(recipe: &str) -> Self {
        Self::from_args(&[&format!("--recipe={recipe}")])
            .expect("the image command's defaults parse")
    }

    pub fn tree(&self) -> rootfs::GuestTree<'_> {
        rootfs::GuestTree {
            recipe: &self.recipe,
            kernel_modules: self.kernel_modules,
        }
    }
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
    /// With `--verity`: the `kernel_verity_params` that boot it.
    pub verity_params: Option<String>,
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
    o.verity = args.verity;
    o
}

/// The image's file name in its step's entry.
pub const FILE: &str = "image";
/// With `--verity`: its `kernel_verity_params`, beside the image.
pub const VERITY_PARAMS: &str = "kernel_verity_params";

/// The `image:<recipe>:<fs>[:nodax]` step, after the recipe's rootfs.
pub fn add<'g>(g: &mut Graph<'g>, ctx: &'g Ctx, args: &ImageArgs) -> Result<StepId> {
    let id = format!(
        "image:{}:{}{}{}",
        args.tree().id(),
        args.fs.name(),
        if args.no_dax { ":nodax" } else { "" },
        if args.verity { ":verity" } else { "" }
    );
    if args.verity && args.free_mib != 0 {
        return Err(crate::error::InputError::new(format!(
            "--verity with --free-mib {}: a verity image is read-only (dm-verity), so free space in it could never be written; drop --free-mib",
            args.free_mib
        ))
        .into());
    }
    let opts = options(ctx, args);
    let d = &ctx.digests;
    let (tool, flag, host_tools) = match args.fs {
        FsArg::Ext4 => (
            "mke2fs",
            "-V",
            vec![host_tools::MKE2FS, host_tools::DEBUGFS],
        ),
        FsArg::Erofs => ("mkfs.erofs", "--version", vec![host_tools::MKFS_EROFS]),
    };
    let mut host_tools = host_tools;
    let mut i = StepInputs::new("image", FORMAT);
    if args.verity {
        host_tools.push(crate::host_tools::VERITYSETUP);
        i.value("verity", true)
            .value("veritysetup", d.tool_version("veritysetup", "--version"));
    }
    i.value("fs", args.fs.name())
        .value("dax", !args.no_dax)
        .value("align_mib", args.align_mib)
        .value("free_mib", args.free_mib)
        .value("fs_uuid", &opts.fs_uuid)
        .value("hash_seed", &opts.hash_seed)
        .value(tool, d.tool_version(tool, flag))
        .tree(d, "src.rootfs-builder", &ctx.root.join("rootfs-builder"))?
        .value("source_date_epoch", ctx.epoch);
    rootfs::add_derived_file(
        g,
        ctx,
        &args.tree(),
        id,
        i,
        &host_tools,
        move |tree, out| {
            let report = build_image(tree, &out.join(FILE), &opts)?;
            if let Some(v) = report.verity {
                std::fs::write(out.join(VERITY_PARAMS), v.kernel_params())?;
            }
            Ok(())
        },
    )
}

/// Builds (or takes from the cache) one image.
pub fn build(ctx: &Ctx, args: &ImageArgs) -> Result<ImageBuild> {
    let entry = crate::graph::build_one(ctx, |g| add(g, ctx, args))?;
    let verity_params = if args.verity {
        Some(std::fs::read_to_string(entry.path(VERITY_PARAMS))?)
    } else {
        None
    };
    Ok(ImageBuild {
        file: entry.path(FILE),
        key: entry.key.clone(),
        verity_params,
    })
}

pub fn file_name(ctx: &Ctx, args: &ImageArgs) -> String {
    let mut name = format!("kata-{}-{}", args.tree().name(), ctx.versions.version);
    if args.fs != FsArg::Ext4 {
        name.push('-');
        name.push_str(args.fs.name());
    }
    if args.no_dax {
        name.push_str("-nodax");
    }
    if args.verity {
        name.push_str("-verity");
    }
    name + ".image"
}

pub fn run(ctx: &Ctx, args: &ImageArgs) -> Result<()> {
    let mut g = Graph::new();
    let id = add(&mut g, ctx, args)?;
    let Some(out) = g.run_command(ctx, id)? else {
        return Ok(());
    };
    let entry = out.entry(id);
    if !args.verity {
        return publish::guest_asset(
            ctx,
            entry,
            FILE,
            &file_name(ctx, args),
            if args.kernel_modules {
                "kata-containers-modules.img"
            } else {
                "kata-containers.img"
            },
            Kind::Image,
            &args.recipe,
        );
    }
    // A verity image is published under its own name: the plain image's
    // link keeps pointing at a plain image.
    let params = std::fs::read_to_string(entry.path(VERITY_PARAMS))?;
    let name = file_name(ctx, args);
    let dest = publish::file(ctx, &entry.path(FILE), &name)?;
    let mut art = publish::artifact(
        ctx,
        &name,
        Kind::Image,
        &dest,
        entry,
        FILE,
        Some(&args.recipe),
    )?;
    art.kernel_verity_params = Some(params.clone());
    let detail = format!("{} bytes, kernel_verity_params {params}", art.bytes);
    publish::report_one(ctx, &name, art, &detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_recipe_is_the_commands_default_dax_image() {
        let a = ImageArgs::for_recipe("debian");
        assert_eq!(a.recipe, "debian");
        assert!(a.fs == FsArg::Ext4 && !a.no_dax && !a.verity && !a.kernel_modules);
        assert_eq!((a.align_mib, a.free_mib), (128, 0));
        let v = ImageArgs::from_args(&["--recipe", "debian", "--verity"]).unwrap();
        assert!(v.verity && v.recipe == "debian");
        assert!(ImageArgs::from_args(&["--no-such-option"]).is_err());
    }
}
