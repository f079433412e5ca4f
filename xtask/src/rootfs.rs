//! `cargo xtask rootfs --recipe NAME`: a guest rootfs tree from a recipe.

use std::path::PathBuf;

use anyhow::Result;
use rootfs_builder::recipe::Recipe;
use rootfs_builder::tree::{self, InputInfo, OsbuilderInfo, RootfsInputs};

use crate::agent;
use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::error::InputError;
use crate::graph::{Graph, StepId};
use crate::host_tools::HostTool;
use crate::manifest::{Artifact, Kind};
use crate::publish;

const FORMAT: u32 = 1;

pub fn load_recipe(ctx: &Ctx, name: &str) -> Result<(Recipe, PathBuf)> {
    let recipe = Recipe::find(&ctx.recipes_dir(), name)
        // {:#}: the message and its cause (an unreadable recipe's I/O error).
        .map_err(|e| InputError::new(format!("{:#}", anyhow::Error::new(e))))?;
    let file = ctx.recipes_dir().join(format!("{name}.yaml"));
    Ok((recipe, file))
}

/// The rootfs tree's dir and its digest file in the step's entry.
pub const TREE: &str = "rootfs";
const DIGEST: &str = "tree.sha256";

/// The `rootfs:<recipe>` step, after the agent and the busybox binary.
pub fn add<'g>(g: &mut Graph<'g>, ctx: &'g Ctx, recipe_name: &str) -> Result<StepId> {
    let id = format!("rootfs:{recipe_name}");
    if let Some(found) = g.find(&id) {
        return Ok(found);
    }
    let (recipe, file) = load_recipe(ctx, recipe_name)?;
    let agent = agent::add(g, ctx)?;
    let busybox_pin = &ctx.versions.busybox.debian;
    let busybox = crate::fetch::add_debian_member(g, ctx, "busybox", busybox_pin);
    let d = &ctx.digests;
    let mut i = StepInputs::new("rootfs", FORMAT);
    i.file(d, "recipe", &file)?
        .value("recipe.name", &recipe.name)
        .tree(d, "src.rootfs-builder", &ctx.root.join("rootfs-builder"))?
        .value("source_date_epoch", ctx.epoch);
    Ok(g.add(id, i, &[agent, busybox], &[], move |o, out| {
        let v = &ctx.versions;
        let agent_bin = o.entry(agent);
        let info = OsbuilderInfo::new(
            &recipe,
            agent::AGENT_VERSION,
            vec![
                InputInfo {
                    name: v.busybox.debian.package.clone(),
                    version: v.busybox.debian.version.clone(),
                    sha256: v.busybox.debian.sha256.to_string(),
                },
                InputInfo {
                    name: agent::BINARY.into(),
                    version: agent::AGENT_VERSION.to_string(),
                    sha256: agent_bin.sha256(agent::BINARY)?,
                },
            ],
            ctx.epoch,
        );
        let dest = out.join(TREE);
        let rin = RootfsInputs {
            busybox: o.path(busybox, &crate::fetch::member_file_name(busybox_pin)),
            agent: agent_bin.path(agent::BINARY),
            osbuilder: info,
            source_date_epoch: ctx.epoch,
        };
        tree::build_rootfs(&recipe, &rin, &dest)?;
        tree::check_rootfs(&dest, &recipe)?;
        std::fs::write(out.join(DIGEST), rootfs_builder::tree_digest(&dest)?)?;
        Ok(())
    }))
}

/// A step that turns a recipe's rootfs tree into a file (`initrd`,
/// `image`): `make(tree, entry_dir)`.
pub fn add_derived_file<'g>(
    g: &mut Graph<'g>,
    ctx: &'g Ctx,
    recipe: &str,
    id: String,
    inputs: StepInputs,
    tools: &[HostTool],
    make: impl Fn(&std::path::Path, &std::path::Path) -> Result<()> + 'g,
) -> Result<StepId> {
    if let Some(found) = g.find(&id) {
        return Ok(found);
    }
    let rootfs = add(g, ctx, recipe)?;
    Ok(g.add(id, inputs, &[rootfs], tools, move |o, out| {
        make(&o.path(rootfs, TREE), out)
    }))
}

pub fn run(ctx: &Ctx, recipe_name: &str) -> Result<()> {
    let mut g = Graph::new();
    let id = add(&mut g, ctx, recipe_name)?;
    let Some(out) = g.run_command(ctx, id)? else {
        return Ok(());
    };
    let entry = out.entry(id);
    let name = format!("rootfs-{recipe_name}");
    let dest = publish::tree(ctx, &entry.path(TREE), &name)?;
    let art = Artifact {
        name,
        kind: Kind::Rootfs,
        path: ctx.rel(&dest),
        sha256: std::fs::read_to_string(entry.path(DIGEST))?,
        bytes: dir_bytes(&dest)?,
        cache_key: entry.key.clone(),
        recipe: Some(recipe_name.to_string()),
    };
    let detail = format!("tree sha256 {}", art.sha256);
    publish::report_one(ctx, "rootfs", art, &detail)
}

fn dir_bytes(dir: &std::path::Path) -> Result<u64> {
    host_support::fs::tree_bytes(dir)
}
