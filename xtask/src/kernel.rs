//! `cargo xtask kernel [--config-only] [--configs DIR] [--debug] [--modules]`: the guest
//! kernel from the pinned Debian source and the `kernel-configs/` fragments.
//!
//! Two cached steps: `kernel-source` (the verified tarball extracted, patches
//! applied; reused by every configuration) and `kernel` (configure, check,
//! build). Outputs get upstream's names in `target/dist/`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use kernel_builder::{BuildOptions, Fragments, Patches};

use crate::cache::{Entry, StepInputs};
use crate::context::Ctx;
use crate::error::InputError;
use crate::graph::{Graph, StepId};
use crate::host_tools::{self, HostTool};
use crate::manifest::{Kind, Manifest};
use crate::publish;

const SOURCE_FORMAT: u32 = 1;
const FORMAT: u32 = 1;
const ARCH: &str = "x86_64";

#[derive(Args, Clone, Default)]
pub struct KernelArgs {
    /// Stop after generating and checking the configuration.
    #[arg(long)]
    pub config_only: bool,
    /// Another fragments tree instead of kernel-configs/.
    #[arg(long, value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// Add the debug fragments.
    #[arg(long)]
    pub debug: bool,
    /// The module flavour: `kernel-configs/modules/` turns module loading
    /// on and makes some drivers modules, which are installed (with
    /// depmod's index) for guests built with `--kernel-modules`.
    #[arg(long)]
    pub modules: bool,
    /// Which pinned source to build: Debian's linux-source package, or the
    /// upstream tarball (only where its sha256 is pinned and it is reachable).
    #[arg(long, value_enum, default_value = "debian")]
    pub source: KernelSource,
}

#[derive(Clone, Copy, Default, clap::ValueEnum, PartialEq, Eq)]
pub enum KernelSource {
    #[default]
    Debian,
    Upstream,
}

pub struct KernelBuild {
    /// The step's entry: the kernel files, and with `--modules` the
    /// installed modules under `modules/lib/modules/<release>`.
    pub dir: PathBuf,
    pub key: String,
    pub release: String,
    pub entry: Entry,
}

impl KernelBuild {
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The uncompressed ELF kernel, which QEMU enters through PVH (the
    /// release's `vmlinux.container`).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// With `--modules`: the `lib/modules/<release>` tree a guest carries.
    pub fn modules(&self) -> Option<PathBuf> {
        let dir = modules_dir(&self.dir, &self.release);
        dir.is_dir().then_some(dir)
    }
}

/// Where the module flavour's step entry holds the installed modules.
const MODULES: &str = "modules";

/// `lib/modules/<release>` in a kernel step's entry `dir`.
fn modules_dir(dir: &std::path::Path, release: &str) -> PathBuf {
    dir.join(MODULES).join("lib/modules").join(release)
}

fn bad<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::Error::new(InputError::new(e.to_string()))
}

pub(crate) fn kernel_err(e: kernel_builder::Error) -> anyhow::Error {
    if e.is_bad_input() {
        bad(e)
    } else {
        anyhow::Error::new(e)
    }
}

fn configs_dir(ctx: &Ctx, args: &KernelArgs) -> PathBuf {
    args.configs
        .clone()
        .unwrap_or_else(|| ctx.root.join("kernel-configs"))
}

/// The patch series used for this kernel: the one named after its
/// major.minor (e.g. `6.1`).
fn series(ctx: &Ctx) -> String {
    ctx.versions
        .kernel
        .version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// The kernel's two steps: `kernel-source` (the verified tarball
/// extracted, patches applied; shared by every configuration) and `kernel`
/// (`kernel-debug` with `--debug`): configure, check, build.
pub struct KernelSteps {
    pub source: StepId,
    pub kernel: StepId,
}

/// The fragments and patches of `args`, checked (exit 2 when bad).
fn load(ctx: &Ctx, args: &KernelArgs) -> Result<(Fragments, Patches)> {
    let dir = configs_dir(ctx, args);
    if !dir.is_dir() {
        return Err(bad(format!("--configs {}: not a directory", dir.display())));
    }
    let fragments =
        Fragments::load_flavour(&dir, ARCH, args.debug, args.modules).map_err(kernel_err)?;
    let patches = Patches::load(&dir, &series(ctx)).map_err(kernel_err)?;
    Ok((fragments, patches))
}

const SOURCE_TOOLS: &[HostTool] = &[host_tools::XZ, host_tools::PATCH];
const BUILD_TOOLS: &[HostTool] = &[
    host_tools::MAKE,
    host_tools::GCC,
    host_tools::FLEX,
    host_tools::BISON,
    host_tools::BC,
    host_tools::LIBELF,
    host_tools::LIBSSL,
];

/// The source tree's dir in the `kernel-source` entry.
const SRC: &str = "src";

/// Adds `kernel-source` and `kernel` (with their inputs) to `g`.
pub fn add<'g>(g: &mut Graph<'g>, ctx: &'g Ctx, args: &KernelArgs) -> Result<KernelSteps> {
    let (fragments, patches) = load(ctx, args)?;
    let pin = &ctx.versions.kernel;
    let d = &ctx.digests;

    let mut source = StepInputs::new("kernel-source", SOURCE_FORMAT);
    let (source_id, tarball_step) = match args.source {
        KernelSource::Debian => {
            source.value("tarball.member", &pin.debian.member);
            let unpack = crate::fetch::add_debian_member(g, ctx, "kernel", &pin.debian);
            ("kernel-source", Some(unpack))
        }
        KernelSource::Upstream => {
            let up = pin
                .upstream
                .as_ref()
                .ok_or_else(|| bad("--source upstream: versions.yaml has no kernel.upstream"))?;
            let sha = up
                .sha256
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unpinned".into());
            source
                .value("tarball.sha256", sha)
                .value("tarball.url", &up.url);
            ("kernel-source:upstream", None)
        }
    };
    for (rel, path) in patches.input_files() {
        source.file(d, &format!("patch:{rel}"), &path)?;
    }
    let source = match g.find(source_id) {
        Some(found) => found,
        None => {
            let deps: Vec<StepId> = tarball_step.into_iter().collect();
            g.add(source_id, source, &deps, SOURCE_TOOLS, move |o, out| {
                let tarball = match tarball_step {
                    Some(unpack) => o.path(unpack, &crate::fetch::member_file_name(&pin.debian)),
                    None => {
                        let up = pin.upstream.as_ref().expect("checked above");
                        ctx.fetcher()?.url("kernel", &up.url, up.sha256.as_ref())?
                    }
                };
                let src =
                    kernel_builder::extract_source(&tarball, &out.join(SRC)).map_err(kernel_err)?;
                let mut log = std::fs::File::create(crate::tools::fresh_log(
                    &ctx.logs().join("kernel-patches.log"),
                )?)?;
                kernel_builder::apply_patches(&src, &patches, &mut log).map_err(kernel_err)
            })
        }
    };

    let mut build = StepInputs::new("kernel", FORMAT);
    build
        .value("kernel.version", &pin.version)
        .value("kata_config_version", pin.kata_config_version)
        .value("arch", ARCH)
        .value("debug", args.debug)
        .value("modules", args.modules)
        .value("gcc", d.tool_version("gcc", "--version"))
        .value("make", d.tool_version("make", "--version"))
        .tree(d, "src.kernel-builder", &ctx.root.join("kernel-builder"))?
        .value("source_date_epoch", ctx.epoch);
    for (rel, path) in fragments.input_files() {
        build.file(d, &format!("fragment:{rel}"), &path)?;
    }
    let id = format!("kernel{}", suffix(args));
    let log_path = ctx.logs().join(format!("{id}.log"));
    let mut tools = BUILD_TOOLS.to_vec();
    if args.modules {
        // depmod writes the modules' index files.
        tools.push(host_tools::DEPMOD);
        build.value("depmod", d.tool_version("depmod", "--version"));
    }
    let modules = args.modules;
    let kernel = g.add(id, build, &[source], &tools, move |o, out| {
        let src = o.path(source, SRC);
        let build_dir = out.join("build");
        let mut conf_log = std::fs::File::create(crate::tools::fresh_log(
            &ctx.logs().join("kernel-config.log"),
        )?)?;
        let report = kernel_builder::configure(&src, &build_dir, &fragments, &mut conf_log)
            .map_err(kernel_err)?;
        for note in report_notes(&report) {
            ctx.ui.info(&note);
        }
        ctx.ui
            .info(&format!("kernel: building (log: {})", log_path.display()));
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let opts = BuildOptions {
            jobs,
            log_path: log_path.clone(),
            progress: true,
            source_date_epoch: ctx.epoch as u64,
        };
        let built = kernel_builder::build(&src, &build_dir, ARCH, &opts).map_err(kernel_err)?;
        if !built.version.starts_with(&ctx.versions.kernel.version) {
            anyhow::bail!(
                "the source builds kernel {} but versions.yaml says kernel.version {}; fix the pin",
                built.version,
                ctx.versions.kernel.version
            );
        }
        if modules {
            kernel_builder::install_modules(
                &src,
                &build_dir,
                ARCH,
                &out.join(MODULES),
                &log_path,
                ctx.epoch as u64,
            )
            .map_err(kernel_err)?;
        }
        std::fs::rename(&built.vmlinux, out.join("vmlinux"))?;
        std::fs::rename(&built.bzimage, out.join("bzImage"))?;
        std::fs::rename(&built.config, out.join("config"))?;
        std::fs::rename(&built.system_map, out.join("System.map"))?;
        std::fs::write(out.join("release"), &built.version)?;
        // The object tree is large and not an output.
        crate::cache::remove_tree(&build_dir)
    });
    Ok(KernelSteps { source, kernel })
}

fn suffix(args: &KernelArgs) -> &'static str {
    match (args.debug, args.modules) {
        (false, false) => "",
        (true, false) => "-debug",
        (false, true) => "-modules",
        (true, true) => "-debug-modules",
    }
}

/// The installed name stem: `<version>-<kata_config_version>[-debug][-modules]`.
pub fn stem(ctx: &Ctx, args: &KernelArgs) -> String {
    format!(
        "{}-{}{}",
        ctx.versions.kernel.version,
        ctx.versions.kernel.kata_config_version,
        suffix(args)
    )
}

/// Configures and checks only, on the cached source; the checked config
/// is returned (in a temp dir the caller removes).
fn config_only(ctx: &Ctx, args: &KernelArgs, src: &std::path::Path) -> Result<PathBuf> {
    let (fragments, _) = load(ctx, args)?;
    let work = ctx.cache()?.temp_dir("kernel-config")?;
    let log_path = crate::tools::fresh_log(&ctx.logs().join("kernel-config.log"))?;
    let mut log = std::fs::File::create(&log_path)?;
    let report =
        kernel_builder::configure(src, work.path(), &fragments, &mut log).map_err(kernel_err)?;
    for note in report_notes(&report) {
        ctx.ui.info(&note);
    }
    let keep = ctx.cache()?.temp_dir("kernel-config-out")?.keep();
    let config = keep.join("config");
    std::fs::copy(work.path().join(".config"), &config)?;
    Ok(config)
}

fn report_notes(report: &kernel_builder::ConfigReport) -> Vec<String> {
    let mut notes: Vec<String> = report
        .whitelisted_missing
        .iter()
        .map(|m| format!("note: {m}"))
        .collect();
    notes.extend(
        report
            .kconfig_warnings
            .iter()
            .map(|w| format!("kconfig: {w}")),
    );
    notes
}

impl KernelBuild {
    pub(crate) fn from_entry(entry: &Entry) -> Result<KernelBuild> {
        Ok(KernelBuild {
            dir: entry.dir.clone(),
            key: entry.key.clone(),
            release: std::fs::read_to_string(entry.path("release"))?,
            entry: entry.clone(),
        })
    }
}

/// Builds (or takes from the cache) the kernel of `args`.
pub fn build(ctx: &Ctx, args: &KernelArgs) -> Result<KernelBuild> {
    let entry = crate::graph::build_one(ctx, |g| Ok(add(g, ctx, args)?.kernel))?;
    KernelBuild::from_entry(&entry)
}

pub fn run(ctx: &Ctx, args: &KernelArgs) -> Result<()> {
    let mut g = Graph::new();
    let steps = add(&mut g, ctx, args)?;
    let target = if args.config_only {
        steps.source
    } else {
        steps.kernel
    };
    let Some(out) = g.run_command(ctx, target)? else {
        return Ok(());
    };
    let stem = stem(ctx, args);
    if args.config_only {
        let config = config_only(ctx, args, &out.path(steps.source, SRC))?;
        let dest = publish::file(ctx, &config, &format!("config-{stem}"))?;
        let _ = std::fs::remove_dir_all(config.parent().expect("in a dir"));
        let art = crate::manifest::Artifact {
            name: format!("config-{stem}"),
            kind: Kind::KernelConfig,
            path: ctx.rel(&dest),
            sha256: crate::hash::file_sha256(&dest)?,
            bytes: std::fs::metadata(&dest)?.len(),
            cache_key: g.key(steps.kernel),
            recipe: None,
            kernel_verity_params: None,
        };
        Manifest::record(
            &ctx.dist(),
            &ctx.versions.version,
            ctx.epoch,
            vec![art.clone()],
        )?;
        let (fragments, _) = load(ctx, args)?;
        ctx.ui.info(&format!(
            "kernel config: every requested option is set ({} fragments options); {}",
            fragments.requests().len(),
            art.path
        ));
        if ctx.json {
            ctx.print_json(&serde_json::json!({ "config": art, "checked_options": fragments.requests().len() }))?;
        }
        return Ok(());
    }
    let k = KernelBuild::from_entry(out.entry(steps.kernel))?;
    let arts = install(ctx, args, &k)?;
    Manifest::record(&ctx.dist(), &ctx.versions.version, ctx.epoch, arts.clone())?;
    for a in &arts {
        ctx.ui
            .info(&format!("kernel: {} ({} bytes)", a.path, a.bytes));
    }
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "release": k.release, "artifacts": arts }))?;
    }
    Ok(())
}

/// Publishes with upstream's names and `.container` symlinks.
pub fn install(
    ctx: &Ctx,
    args: &KernelArgs,
    k: &KernelBuild,
) -> Result<Vec<crate::manifest::Artifact>> {
    let stem = stem(ctx, args);
    let sfx = suffix(args);
    let mut arts = Vec::new();
    let items: [(&str, &str, Kind, Option<&str>); 4] = [
        ("vmlinux", "vmlinux", Kind::Kernel, Some("vmlinux")),
        (
            "bzImage",
            "vmlinuz",
            Kind::KernelCompressed,
            Some("vmlinuz"),
        ),
        ("config", "config", Kind::KernelConfig, None),
        ("System.map", "System.map", Kind::KernelConfig, None),
    ];
    for (file, base, kind, link) in items {
        if file == "System.map" {
            // Not a manifest kind of its own; shipped next to the kernel.
            publish::file(ctx, &k.dir.join(file), &format!("{base}-{stem}"))?;
            continue;
        }
        let name = format!("{base}-{stem}");
        let dest = publish::file(ctx, &k.dir.join(file), &name)?;
        if let Some(l) = link {
            publish::symlink(ctx, &name, &format!("{l}{sfx}.container"))?;
        }
        arts.push(publish::artifact(
            ctx, &name, kind, &dest, &k.entry, file, None,
        )?);
    }
    Ok(arts)
}
