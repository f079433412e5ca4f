//! `cargo xtask kernel [--config-only] [--configs DIR] [--debug]`: the guest
//! kernel from the pinned Debian source and the `kernel-configs/` fragments.
//!
//! Two cached steps: `kernel-source` (the verified tarball extracted, patches
//! applied; reused by every configuration) and `kernel` (configure, check,
//! build). Outputs get upstream's names in `target/dist/`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use kernel_builder::{BuildOptions, Fragments, Patches};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::error::InputError;
use crate::manifest::{Kind, Manifest};
use crate::plan::Plan;
use crate::publish;
use crate::tools::version_line;

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
    pub dir: PathBuf,
    pub key: String,
    pub release: String,
}

impl KernelBuild {
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
}

fn bad<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::Error::new(InputError::new(e.to_string()))
}

fn kernel_err(e: kernel_builder::Error) -> anyhow::Error {
    if e.is_bad_input() {
        bad(e)
    } else {
        anyhow::Error::new(e)
    }
}

struct Loaded {
    source_kind: KernelSource,
    fragments: Fragments,
    patches: Patches,
    source: StepInputs,
    build: StepInputs,
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

fn load(ctx: &Ctx, args: &KernelArgs) -> Result<Loaded> {
    let dir = configs_dir(ctx, args);
    if !dir.is_dir() {
        return Err(bad(format!("--configs {}: not a directory", dir.display())));
    }
    let fragments = Fragments::load(&dir, ARCH, args.debug).map_err(kernel_err)?;
    let patches = Patches::load(&dir, &series(ctx)).map_err(kernel_err)?;
    let pin = &ctx.versions.kernel;

    let mut source = StepInputs::new("kernel-source", SOURCE_FORMAT);
    match args.source {
        KernelSource::Debian => {
            source
                .value("tarball.sha256", &pin.debian.sha256)
                .value("tarball.member", &pin.debian.member);
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
        }
    }
    for (rel, path) in patches.input_files() {
        source.file(&format!("patch:{rel}"), &path)?;
    }

    let mut build = StepInputs::new("kernel", FORMAT);
    build
        .value("source.key", source.key())
        .value("kernel.version", &pin.version)
        .value("kata_config_version", pin.kata_config_version)
        .value("arch", ARCH)
        .value("debug", args.debug)
        .value("gcc", version_line("gcc", "--version")?)
        .value("make", version_line("make", "--version")?)
        .tree("src.kernel-builder", &ctx.root.join("kernel-builder"))?
        .value("source_date_epoch", ctx.epoch);
    for (rel, path) in fragments.input_files() {
        build.file(&format!("fragment:{rel}"), &path)?;
    }
    Ok(Loaded {
        source_kind: args.source,
        fragments,
        patches,
        source,
        build,
    })
}

/// The kernel's two steps (`kernel-source`, `kernel`), for the plans of
/// commands that build it as a part (`release`).
pub fn plan_inputs(ctx: &Ctx, args: &KernelArgs) -> Result<(StepInputs, StepInputs)> {
    let l = load(ctx, args)?;
    Ok((l.source, l.build))
}

pub fn require_tools() -> Result<()> {
    crate::tools::require(
        "kernel",
        &[
            ("make", "make"),
            ("gcc", "gcc"),
            ("flex", "flex"),
            ("bison", "bison"),
            ("bc", "bc"),
            ("xz", "xz-utils"),
            ("patch", "patch"),
            ("dpkg-deb", "dpkg"),
        ],
    )?;
    Ok(())
}

/// The extracted, patched source tree (cached: extraction alone takes a
/// minute and every configuration reuses it).
fn source_tree(ctx: &Ctx, l: &Loaded) -> Result<PathBuf> {
    let cache = ctx.cache()?;
    if let Some(e) = cache.lookup(&l.source) {
        return Ok(e.dir.join("src"));
    }
    let pin = &ctx.versions.kernel;
    let tarball = match l.source_kind {
        KernelSource::Debian => ctx.fetcher()?.debian_member("kernel", &pin.debian)?,
        KernelSource::Upstream => {
            let up = pin.upstream.as_ref().expect("checked in load");
            ctx.fetcher()?.url("kernel", &up.url, up.sha256.as_ref())?
        }
    };
    let progress = ctx.ui.step("kernel source: extract");
    let entry = cache.step(&l.source, &ctx.ui, |out| {
        let src = kernel_builder::extract_source(&tarball, &out.join("src")).map_err(kernel_err)?;
        let mut log = std::fs::File::create(crate::tools::fresh_log(
            &ctx.logs().join("kernel-patches.log"),
        )?)?;
        kernel_builder::apply_patches(&src, &l.patches, &mut log).map_err(kernel_err)?;
        Ok(())
    })?;
    progress.finish("ready");
    Ok(entry.dir.join("src"))
}

fn suffix(args: &KernelArgs) -> &'static str {
    if args.debug {
        "-debug"
    } else {
        ""
    }
}

/// The installed name stem: `<version>-<kata_config_version>[-debug]`.
pub fn stem(ctx: &Ctx, args: &KernelArgs) -> String {
    format!(
        "{}-{}{}",
        ctx.versions.kernel.version,
        ctx.versions.kernel.kata_config_version,
        suffix(args)
    )
}

/// Configures and checks only; the checked config is returned.
fn config_only(ctx: &Ctx, l: &Loaded) -> Result<PathBuf> {
    let src = source_tree(ctx, l)?;
    let work = ctx.cache()?.temp_dir("kernel-config")?;
    let log_path = crate::tools::fresh_log(&ctx.logs().join("kernel-config.log"))?;
    let mut log = std::fs::File::create(&log_path)?;
    let report =
        kernel_builder::configure(&src, work.path(), &l.fragments, &mut log).map_err(kernel_err)?;
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

pub fn build(ctx: &Ctx, args: &KernelArgs) -> Result<KernelBuild> {
    let l = load(ctx, args)?;
    let cache = ctx.cache()?;
    if let Some(e) = cache.lookup(&l.build) {
        let release = std::fs::read_to_string(e.dir.join("release"))?;
        ctx.ui.info("kernel: cached");
        return Ok(KernelBuild {
            dir: e.dir,
            key: e.key,
            release,
        });
    }
    let src = source_tree(ctx, &l)?;
    let log_path = ctx.logs().join(format!("kernel{}.log", suffix(args)));
    let entry = cache.step(&l.build, &ctx.ui, |out| {
        let build_dir = out.join("build");
        let mut conf_log = std::fs::File::create(crate::tools::fresh_log(
            &ctx.logs().join("kernel-config.log"),
        )?)?;
        let report = kernel_builder::configure(&src, &build_dir, &l.fragments, &mut conf_log)
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
        std::fs::rename(&built.vmlinux, out.join("vmlinux"))?;
        std::fs::rename(&built.bzimage, out.join("bzImage"))?;
        std::fs::rename(&built.config, out.join("config"))?;
        std::fs::rename(&built.system_map, out.join("System.map"))?;
        std::fs::write(out.join("release"), &built.version)?;
        for f in ["vmlinux", "bzImage", "config"] {
            publish::seal(&out.join(f))?;
        }
        // The object tree is large and not an output.
        crate::cache::remove_tree(&build_dir)
    })?;
    let release = std::fs::read_to_string(entry.dir.join("release"))?;
    Ok(KernelBuild {
        dir: entry.dir,
        key: entry.key,
        release,
    })
}

pub fn run(ctx: &Ctx, args: &KernelArgs) -> Result<()> {
    require_tools()?;
    let l = load(ctx, args)?;
    let mut plan = Plan::default();
    plan.add(ctx, &l.source);
    if !args.config_only {
        plan.add(ctx, &l.build);
    }
    if plan.show_if_dry_run(ctx)? {
        return Ok(());
    }
    ctx.ensure_dist_writable()?;
    let stem = stem(ctx, args);
    if args.config_only {
        let config = config_only(ctx, &l)?;
        let dest = publish::file(ctx, &config, &format!("config-{stem}"))?;
        let _ = std::fs::remove_dir_all(config.parent().expect("in a dir"));
        let art = publish::artifact(
            ctx,
            &format!("config-{stem}"),
            Kind::KernelConfig,
            &dest,
            &dest,
            &l.build.key(),
            None,
        )?;
        Manifest::record(
            &ctx.dist(),
            &ctx.versions.version,
            ctx.epoch,
            vec![art.clone()],
        )?;
        ctx.ui.info(&format!(
            "kernel config: every requested option is set ({} fragments options); {}",
            l.fragments.requests().len(),
            art.path
        ));
        if ctx.json {
            ctx.print_json(&serde_json::json!({ "config": art, "checked_options": l.fragments.requests().len() }))?;
        }
        return Ok(());
    }
    let k = build(ctx, args)?;
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
            ctx,
            &name,
            kind,
            &dest,
            &k.dir.join(file),
            &k.key,
            None,
        )?);
    }
    Ok(arts)
}
