//! `cargo xtask rootfs --recipe NAME`: a guest rootfs tree from a recipe.

use std::path::PathBuf;

use anyhow::Result;
use rootfs_builder::packages::{self, Lock};
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
use crate::versions::{DebianPackagePin, Sha256Hex};

/// 2: the kernel-modules input is recorded by content, not mtimes.
const FORMAT: u32 = 2;

pub fn load_recipe(ctx: &Ctx, name: &str) -> Result<(Recipe, PathBuf)> {
    let recipe = Recipe::find(&ctx.recipes_dir(), name)
        // {:#}: the message and its cause (an unreadable recipe's I/O error).
        .map_err(|e| InputError::new(format!("{:#}", anyhow::Error::new(e))))?;
    let file = ctx.recipes_dir().join(format!("{name}.yaml"));
    Ok((recipe, file))
}

/// The recipe's package lock, checked against the recipe and versions.yaml
/// (fail-closed); `None` for a recipe without packages.
pub fn load_lock(ctx: &Ctx, recipe: &Recipe) -> Result<Option<(PathBuf, Lock)>> {
    let Some(spec) = &recipe.packages else {
        return Ok(None);
    };
    let file = packages::lock_path(&ctx.recipes_dir(), &recipe.name);
    let lock = Lock::load_checked(
        &file,
        &recipe.name,
        spec.variant,
        &spec.install,
        &ctx.versions.distro.suite,
    )
    .map_err(|e| InputError::new(format!("{e:#}")))?;
    if lock.architecture != ctx.versions.distro.architecture {
        return Err(InputError::new(format!(
            "{}: resolved for {}, but versions.yaml distro.architecture is {}; run `cargo xtask versions --update recipe:{}`",
            file.display(),
            lock.architecture,
            ctx.versions.distro.architecture,
            recipe.name
        ))
        .into());
    }
    Ok(Some((file, lock)))
}

/// The rootfs tree's dir and its digest file in the step's entry.
pub const TREE: &str = "rootfs";
const DIGEST: &str = "tree.sha256";

/// A recipe's tree, and whether it carries the module flavour kernel's
/// modules (`--kernel-modules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTree<'a> {
    pub recipe: &'a str,
    pub kernel_modules: bool,
}

impl GuestTree<'_> {
    /// In step ids: `minimal`, `minimal+modules`.
    pub fn id(&self) -> String {
        if self.kernel_modules {
            format!("{}+modules", self.recipe)
        } else {
            self.recipe.to_string()
        }
    }

    /// In published names: `minimal`, `minimal-modules`.
    pub fn name(&self) -> String {
        if self.kernel_modules {
            format!("{}-modules", self.recipe)
        } else {
            self.recipe.to_string()
        }
    }
}

/// The `rootfs:<recipe>[+modules]` step, after the agent and the busybox
/// binary (and with modules, the module flavour's kernel).
pub fn add<'g>(g: &mut Graph<'g>, ctx: &'g Ctx, tree: &GuestTree) -> Result<StepId> {
    let recipe_name = tree.recipe;
    let id = format!("rootfs:{}", tree.id());
    if let Some(found) = g.find(&id) {
        return Ok(found);
    }
    let (recipe, file) = load_recipe(ctx, recipe_name)?;
    let lock = load_lock(ctx, &recipe)?;
    let agent = agent::add(g, ctx)?;
    let busybox_pin = &ctx.versions.busybox.debian;
    let busybox = crate::fetch::add_debian_member(g, ctx, "busybox", busybox_pin);
    let mut deps = vec![agent, busybox];
    let kernel = if tree.kernel_modules {
        let args = crate::kernel::KernelArgs {
            modules: true,
            ..Default::default()
        };
        let k = crate::kernel::add(g, ctx, &args)?.kernel;
        deps.push(k);
        Some(k)
    } else {
        None
    };
    let d = &ctx.digests;
    let mut i = StepInputs::new("rootfs", FORMAT);
    i.file(d, "recipe", &file)?
        .value("recipe.name", &recipe.name)
        .value("kernel_modules", tree.kernel_modules)
        // A root tree holds files its builder alone may read (/etc/shadow
        // 0000): root's and a user's builds keep separate entries.
        .value(
            "privileges",
            rootfs_builder::Privileges::of_process().as_str(),
        )
        .tree(d, "src.rootfs-builder", &ctx.root.join("rootfs-builder"))?
        .value("source_date_epoch", ctx.epoch);
    let mut tools = Vec::new();
    if let Some((lock_file, _)) = &lock {
        i.file(d, "lock", lock_file)?;
        tools.extend([crate::host_tools::APT_GET, crate::host_tools::DPKG_DEB]);
        if recipe.init == rootfs_builder::InitMode::Systemd {
            tools.push(crate::host_tools::MMDEBSTRAP);
            if rootfs_builder::Privileges::of_process() == rootfs_builder::Privileges::Rootless {
                tools.push(crate::host_tools::NEWUIDMAP);
            }
        }
    }
    Ok(g.add(id, i, &deps, &tools, move |o, out| {
        let v = &ctx.versions;
        let agent_bin = o.entry(agent);
        let mut inputs = vec![
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
        ];
        let mut packages = Vec::new();
        if let Some((lock_file, lock)) = &lock {
            let fetcher = ctx.fetcher()?;
            for p in &lock.packages {
                let pin = DebianPackagePin {
                    package: p.name.clone(),
                    version: p.version.clone(),
                    sha256: Sha256Hex::parse(&p.sha256).map_err(|e| {
                        InputError::new(format!("{}: {}: {e}", lock_file.display(), p.name))
                    })?,
                    member: String::new(),
                };
                let key = format!("recipe:{}", recipe.name);
                packages.push((p.name.clone(), fetcher.debian_package(&key, &pin)?));
                inputs.push(InputInfo {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                });
            }
        }
        let kernel_modules = match kernel {
            Some(k) => {
                let built = crate::kernel::KernelBuild::from_entry(o.entry(k))?;
                let dir = built.modules().ok_or_else(|| {
                    anyhow::anyhow!(
                        "the kernel-modules step holds no lib/modules/{}",
                        built.release
                    )
                })?;
                // Content only: the entry's mtimes say when the kernel
                // was built, and the tree pins its own.
                inputs.push(InputInfo {
                    name: "kernel-modules".into(),
                    version: built.release,
                    sha256: rootfs_builder::content_digest(&dir)?,
                });
                Some(dir)
            }
            None => None,
        };
        let info = OsbuilderInfo::new(&recipe, agent::AGENT_VERSION, inputs, ctx.epoch);
        let dest = out.join(TREE);
        let rin = RootfsInputs {
            busybox: o.path(busybox, &crate::fetch::member_file_name(busybox_pin)),
            agent: agent_bin.path(agent::BINARY),
            osbuilder: info,
            source_date_epoch: ctx.epoch,
            packages,
            suite: ctx.versions.distro.suite.clone(),
            architecture: ctx.versions.distro.architecture.clone(),
            log_dir: ctx.logs(),
            kernel_modules,
            privileges: rootfs_builder::Privileges::of_process(),
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
    tree: &GuestTree,
    id: String,
    inputs: StepInputs,
    tools: &[HostTool],
    make: impl Fn(&std::path::Path, &std::path::Path) -> Result<()> + 'g,
) -> Result<StepId> {
    if let Some(found) = g.find(&id) {
        return Ok(found);
    }
    let rootfs = add(g, ctx, tree)?;
    Ok(g.add(id, inputs, &[rootfs], tools, move |o, out| {
        make(&o.path(rootfs, TREE), out)
    }))
}

pub fn run(ctx: &Ctx, tree: &GuestTree) -> Result<()> {
    let recipe_name = tree.recipe;
    let mut g = Graph::new();
    let id = add(&mut g, ctx, tree)?;
    let Some(out) = g.run_command(ctx, id)? else {
        return Ok(());
    };
    let entry = out.entry(id);
    let name = format!("rootfs-{}", tree.name());
    let dest = publish::tree(ctx, &entry.path(TREE), &name)?;
    let art = Artifact {
        name,
        kind: Kind::Rootfs,
        path: ctx.rel(&dest),
        sha256: std::fs::read_to_string(entry.path(DIGEST))?,
        bytes: dir_bytes(&dest)?,
        cache_key: entry.key.clone(),
        recipe: Some(recipe_name.to_string()),
        kernel_verity_params: None,
    };
    let detail = format!("tree sha256 {}", art.sha256);
    publish::report_one(ctx, "rootfs", art, &detail)
}

fn dir_bytes(dir: &std::path::Path) -> Result<u64> {
    host_support::fs::tree_bytes(dir)
}
