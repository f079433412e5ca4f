//! `cargo xtask rootfs --recipe NAME`: a guest rootfs tree from a recipe.

use std::path::PathBuf;

use anyhow::Result;
use rootfs_builder::recipe::Recipe;
use rootfs_builder::tree::{self, InputInfo, OsbuilderInfo, RootfsInputs};

use crate::agent;
use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::error::InputError;
use crate::manifest::{Artifact, Kind, Manifest};
use crate::plan::Plan;
use crate::publish;

const FORMAT: u32 = 1;

pub struct RootfsBuild {
    pub dir: PathBuf,
    pub key: String,
    pub digest: String,
}

pub fn load_recipe(ctx: &Ctx, name: &str) -> Result<(Recipe, PathBuf)> {
    let recipe = Recipe::find(&ctx.recipes_dir(), name)
        // {:#}: the message and its cause (an unreadable recipe's I/O error).
        .map_err(|e| InputError::new(format!("{:#}", anyhow::Error::new(e))))?;
    let file = ctx.recipes_dir().join(format!("{name}.yaml"));
    Ok((recipe, file))
}

/// The rootfs step's inputs chain the agent step's key rather than the
/// agent's bytes, so the whole plan is known before anything is built.
pub fn inputs(ctx: &Ctx, recipe_name: &str) -> Result<(StepInputs, StepInputs, Recipe)> {
    let (recipe, file) = load_recipe(ctx, recipe_name)?;
    let agent = agent::inputs(ctx)?;
    let mut i = StepInputs::new("rootfs", FORMAT);
    i.file("recipe", &file)?
        .value("recipe.name", &recipe.name)
        .value("busybox.sha256", &ctx.versions.busybox.debian.sha256)
        .value("busybox.member", &ctx.versions.busybox.debian.member)
        .value("agent.key", agent.key())
        .tree("src.rootfs-builder", &ctx.root.join("rootfs-builder"))?
        .value("source_date_epoch", ctx.epoch);
    Ok((i, agent, recipe))
}

/// What building a rootfs runs on the host.
pub fn require_tools() -> Result<()> {
    crate::tools::require(
        "rootfs",
        &[
            ("apt-get", "apt"),
            ("dpkg-deb", "dpkg"),
            ("cargo", "rustup"),
            ("rustc", "rustup"),
        ],
    )
}

pub fn build(ctx: &Ctx, recipe_name: &str) -> Result<RootfsBuild> {
    let (inputs, _, recipe) = inputs(ctx, recipe_name)?;
    let cache = ctx.cache()?;
    if let Some(entry) = cache.lookup(&inputs) {
        ctx.ui.info(&format!("rootfs {recipe_name}: cached"));
        let digest = std::fs::read_to_string(entry.dir.join("tree.sha256"))?;
        return Ok(RootfsBuild {
            dir: entry.dir.join("rootfs"),
            key: entry.key,
            digest,
        });
    }
    // The cheap, verifiable input first: a bad pin fails before a long build.
    let busybox = ctx
        .fetcher()?
        .debian_member("busybox", &ctx.versions.busybox.debian)?;
    let agent = agent::build(ctx)?;
    let v = &ctx.versions;
    let info = OsbuilderInfo::new(
        &recipe,
        &agent.version,
        vec![
            InputInfo {
                name: v.busybox.debian.package.clone(),
                version: v.busybox.debian.version.clone(),
                sha256: v.busybox.debian.sha256.to_string(),
            },
            InputInfo {
                name: "kata-agent".into(),
                version: agent.version.clone(),
                sha256: crate::hash::file_sha256(&agent.binary)?,
            },
        ],
        ctx.epoch,
    );
    let progress = ctx.ui.step(&format!("rootfs {recipe_name}"));
    let entry = cache.step(&inputs, &ctx.ui, |out| {
        let dest = out.join("rootfs");
        let rin = RootfsInputs {
            busybox: busybox.clone(),
            agent: agent.binary.clone(),
            osbuilder: info,
            source_date_epoch: ctx.epoch,
        };
        tree::build_rootfs(&recipe, &rin, &dest)?;
        tree::check_rootfs(&dest, &recipe)?;
        let digest = rootfs_builder::tree_digest(&dest)?;
        std::fs::write(out.join("tree.sha256"), &digest)?;
        Ok(())
    })?;
    progress.finish(if entry.hit { "cached" } else { "built" });
    let digest = std::fs::read_to_string(entry.dir.join("tree.sha256"))?;
    Ok(RootfsBuild {
        dir: entry.dir.join("rootfs"),
        key: entry.key,
        digest,
    })
}

/// A step that turns the recipe's rootfs tree into one file (initrd,
/// image): a cache hit needs no rootfs at all; a miss builds (or takes) the
/// rootfs, then `make(tree, output)`. Returns the sealed output in the entry.
pub fn derived_file(
    ctx: &Ctx,
    recipe: &str,
    inputs: &StepInputs,
    what: &str,
    file: &str,
    make: impl FnOnce(&std::path::Path, &std::path::Path) -> Result<()>,
) -> Result<(PathBuf, String)> {
    let cache = ctx.cache()?;
    let entry = match cache.lookup(inputs) {
        Some(e) => e,
        None => {
            let r = build(ctx, recipe)?;
            let progress = ctx.ui.step(what);
            let e = cache.step(inputs, &ctx.ui, |out| {
                make(&r.dir, &out.join(file))?;
                publish::seal(&out.join(file))
            })?;
            progress.finish("built");
            e
        }
    };
    Ok((entry.dir.join(file), entry.key))
}

pub fn run(ctx: &Ctx, recipe_name: &str) -> Result<()> {
    require_tools()?;
    let (inputs, agent, _) = inputs(ctx, recipe_name)?;
    let mut plan = Plan::default();
    plan.add(ctx, &agent);
    plan.add(ctx, &inputs);
    if plan.show_if_dry_run(ctx)? {
        return Ok(());
    }
    ctx.ensure_dist_writable()?;
    let r = build(ctx, recipe_name)?;
    let name = format!("rootfs-{recipe_name}");
    let dest = publish::tree(ctx, &r.dir, &name)?;
    let art = Artifact {
        name: name.clone(),
        kind: Kind::Rootfs,
        path: ctx.rel(&dest),
        sha256: r.digest.clone(),
        bytes: dir_bytes(&dest)?,
        cache_key: r.key.clone(),
        recipe: Some(recipe_name.to_string()),
    };
    Manifest::record(
        &ctx.dist(),
        &ctx.versions.version,
        ctx.epoch,
        vec![art.clone()],
    )?;
    ctx.ui.info(&format!(
        "rootfs: {} (tree sha256 {})",
        art.path, art.sha256
    ));
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&art)?)?;
    }
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> Result<u64> {
    host_support::fs::tree_bytes(dir)
}
