//! `cargo xtask release [--version V] [--recipes minimal,R...]`: everything
//! a release publishes.
//!
//! Steps, each cached (an unchanged rerun is all cache hits):
//! kernel, agent -> rootfs -> initrd and DAX image, `runtime-bins` (static
//! shim and kata-runtime), `vhost-device-vsock` (the pinned crate), then
//! `release`: configuration.toml rendered for `/opt/kata`, the static
//! tarball, the .deb, the .rpm, the SPDX SBOM and SHA256SUMS, all written by
//! the `packaging` crate (which reads every archive back and refuses one that
//! could damage a host). The `release` key chains the keys of every step it
//! packs plus the template, versions.yaml, Cargo.lock (the SBOM lists its
//! crates), the packaging code, the version and SOURCE_DATE_EPOCH.
//!
//! `--recipes` ships more guests beside the default `minimal` one: each
//! other recipe R adds its DAX image `kata-R-<version>.image`, the link
//! `kata-containers-R.img` and `configuration-R.toml` (upstream names a
//! configuration per guest flavour), which differs from configuration.toml
//! only in the image it boots.
//!
//! Everything lands in `target/dist/` and in the manifest (kinds tarball,
//! deb, rpm, sbom, checksums, shim, runtime, config).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use packaging::{
    debian_version, render_configuration, rpm_version, tarball_name, write_deb, write_rpm,
    write_sha256sums, write_spdx_sbom, write_tarball, DebMeta, HelperLock, Layout, Pin,
    ReleaseInputs, RpmMeta, SbomInputs,
};

use crate::cache::{Entry, StepInputs};
use crate::context::Ctx;
use crate::error::InputError;
use crate::graph::{Graph, StepId};
use crate::manifest::{Artifact, Kind, Manifest};
pub use crate::runtime_bins::VSOCK_DAEMON;
use crate::runtime_bins::{self, MONITOR, RUNTIME, SHIM};
use crate::{image, initrd, kernel, publish};

const FORMAT: u32 = 1;
/// Upstream's install prefix; the packages install there.
pub const PREFIX: &str = "/opt/kata";
const RECIPE: &str = "minimal";
const MAINTAINER: &str = "Kata Containers release team <release@katacontainers.io>";
pub const CHECKSUMS: &str = "SHA256SUMS";
pub const CONFIG_NAME: &str = "configuration.toml";

#[derive(Args, Clone, Default)]
pub struct ReleaseArgs {
    /// The release version [default: `version` in versions.yaml].
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// The guests to ship, comma-separated; `minimal` (configuration.toml's
    /// guest) must be one of them. Every other recipe R ships its image
    /// and configuration-R.toml. [default: minimal]
    #[arg(long, value_name = "R,...", value_delimiter = ',')]
    pub recipes: Vec<String>,
}

/// The guests of a release besides the default `minimal`, checked up front
/// (exit 2): each an existing recipe, named once, with `minimal` listed.
pub fn extra_recipes(ctx: &Ctx, args: &ReleaseArgs) -> Result<Vec<String>> {
    if args.recipes.is_empty() {
        return Ok(Vec::new());
    }
    if !args.recipes.iter().any(|r| r == RECIPE) {
        return Err(InputError::new(format!(
            "--recipes {}: the release's default guest `{RECIPE}` (configuration.toml) must be listed too, e.g. --recipes {RECIPE},{}",
            args.recipes.join(","),
            args.recipes.join(",")
        ))
        .into());
    }
    let mut extras: Vec<String> = Vec::new();
    for (i, r) in args.recipes.iter().enumerate() {
        if args.recipes[..i].contains(r) {
            return Err(InputError::new(format!("--recipes: {r} is listed twice")).into());
        }
        crate::rootfs::load_recipe(ctx, r)?;
        if r != RECIPE {
            extras.push(r.clone());
        }
    }
    Ok(extras)
}

/// What an extra guest is called in the release: its image, the link
/// configuration-R.toml boots, and that configuration.
fn extra_guest_names(recipe: &str, version: &str) -> (String, String, String) {
    (
        format!("kata-{recipe}-{version}.image"),
        format!("kata-containers-{recipe}.img"),
        format!("configuration-{recipe}.toml"),
    )
}

/// The file names of one release, all in the `release` step's entry and in dist.
pub struct ReleaseNames {
    pub tarball: String,
    pub deb: String,
    pub rpm: String,
    pub sbom: String,
}

impl ReleaseNames {
    fn new(version: &str) -> Result<Self> {
        let deb = DebMeta::kata_static(version, MAINTAINER, 0)?;
        let rpm = RpmMeta::kata_static(version)?;
        Ok(ReleaseNames {
            tarball: tarball_name(version),
            deb: format!("{}_{}_{}.deb", deb.package, deb.version, deb.architecture),
            rpm: format!(
                "{}-{}-{}.{}.rpm",
                rpm.name, rpm.version, rpm.release, rpm.arch
            ),
            sbom: format!("kata-static-{version}.spdx.json"),
        })
    }
}

/// The version, checked up front (exit 2) against every format that carries it.
fn release_version(ctx: &Ctx, args: &ReleaseArgs) -> Result<String> {
    let (v, origin) = match &args.version {
        Some(v) => (v.clone(), "--version".to_string()),
        None => (
            ctx.versions.version.clone(),
            format!("{}: version", ctx.versions_path.display()),
        ),
    };
    let bad_chars = v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '/');
    let check = if bad_chars {
        Err(anyhow::anyhow!("empty or has spaces or '/'"))
    } else {
        debian_version(&v).and(rpm_version(&v)).map(drop)
    };
    if let Err(e) = check {
        return Err(InputError::new(format!(
            "{origin} {v:?} cannot name a release ({e:#}); use a version like 1.2.3 or 1.2.3-rc1"
        ))
        .into());
    }
    Ok(v)
}

/// The tarball's file name for the default version.
pub fn tarball_file_name(ctx: &Ctx) -> Result<String> {
    Ok(tarball_name(&release_version(
        ctx,
        &ReleaseArgs::default(),
    )?))
}

fn epoch(ctx: &Ctx) -> Result<u64> {
    u64::try_from(ctx.epoch).map_err(|_| {
        InputError::new(format!(
            "SOURCE_DATE_EPOCH {} is negative; packages need a time after 1970",
            ctx.epoch
        ))
        .into()
    })
}

fn kernel_args() -> kernel::KernelArgs {
    kernel::KernelArgs::default()
}

fn initrd_args() -> initrd::InitrdArgs {
    initrd::InitrdArgs {
        recipe: RECIPE.into(),
        compression: initrd::CompressionArg::Gzip,
        kernel_modules: false,
    }
}

fn template_path(ctx: &Ctx) -> PathBuf {
    ctx.root
        .join("runtime")
        .join("config")
        .join("configuration.toml.in")
}

/// A release's steps: the parts it packs, then `release` itself.
pub struct ReleaseSteps {
    pub kernel: StepId,
    pub initrd: StepId,
    pub image: StepId,
    pub runtime_bins: StepId,
    pub vsock: StepId,
    /// The other guests' images, by recipe.
    pub extra_images: Vec<(String, StepId)>,
    pub release: StepId,
}

/// Adds every step of a release of `version` to `g`. The `release` step's
/// inputs are the keys of every step it packs (added by the graph) plus the
/// template, versions.yaml, Cargo.lock (the SBOM lists its crates), the
/// packaging code, the version and SOURCE_DATE_EPOCH.
pub fn add<'g>(
    g: &mut Graph<'g>,
    ctx: &'g Ctx,
    version: String,
    extra_recipes: &[String],
) -> Result<ReleaseSteps> {
    let epoch = epoch(ctx)?;
    let names = ReleaseNames::new(&version)?;
    let kernel = kernel::add(g, ctx, &kernel_args())?.kernel;
    let initrd = initrd::add(g, ctx, &initrd_args())?;
    let image = image::add(g, ctx, &image::ImageArgs::for_recipe(RECIPE))?;
    let mut extra_images = Vec::new();
    for r in extra_recipes {
        extra_images.push((
            r.clone(),
            image::add(g, ctx, &image::ImageArgs::for_recipe(r))?,
        ));
    }
    let runtime_bins = runtime_bins::add_runtime(g, ctx)?;
    let vsock = runtime_bins::add_vsock(g, ctx)?;
    let d = &ctx.digests;
    let mut inputs = StepInputs::new("release", FORMAT);
    inputs
        .file(d, "configuration.toml.in", &template_path(ctx))?
        .file(d, "versions.yaml", &ctx.versions_path)?
        .file(d, "Cargo.lock", &ctx.root.join("Cargo.lock"))?
        .tree(d, "src.packaging", &ctx.root.join("packaging"))?
        .value("prefix", PREFIX)
        .value("recipe", RECIPE)
        .value("version", &version)
        .value("source_date_epoch", ctx.epoch);
    let mut deps = vec![kernel, initrd, image, runtime_bins, vsock];
    if !extra_recipes.is_empty() {
        inputs.value("extra_recipes", extra_recipes.join(","));
        // The SBOM lists the extra guests' packages: their locks.
        for r in extra_recipes {
            let lock = rootfs_builder::packages::lock_path(&ctx.recipes_dir(), r);
            if lock.is_file() {
                inputs.file(d, &format!("lock.{r}"), &lock)?;
            }
        }
        deps.extend(extra_images.iter().map(|(_, id)| *id));
    }
    let lock = rootfs_builder::packages::lock_path(&ctx.recipes_dir(), RECIPE);
    if lock.is_file() {
        inputs.file(d, &format!("lock.{RECIPE}"), &lock)?;
    }
    let extra_steps = extra_images.clone();
    let release = g.add("release", inputs, &deps, &[], move |o, out| {
        let parts = Parts {
            kernel: o.entry(kernel),
            initrd: o.entry(initrd),
            image: o.entry(image),
            bins: o.entry(runtime_bins),
            vsock: o.entry(vsock),
            extra_images: extra_steps
                .iter()
                .map(|(r, id)| (r.clone(), o.entry(*id)))
                .collect(),
        };
        package(ctx, &version, epoch, &parts, &names, out)
    });
    Ok(ReleaseSteps {
        kernel,
        initrd,
        image,
        runtime_bins,
        vsock,
        extra_images,
        release,
    })
}

/// `pkg:deb/...` version: `+` is percent-encoded in purls.
fn deb_pin(name: &str, version: &str, sha256: &str) -> Pin {
    Pin {
        name: name.into(),
        version: version.into(),
        // Fetched through apt from the Debian archive; the purl names it.
        download_location: "NOASSERTION".into(),
        sha256: sha256.into(),
        purl: Some(format!(
            "pkg:deb/debian/{name}@{}",
            version.replace('+', "%2B")
        )),
    }
}

/// What went into the shipped files from outside this workspace (the
/// workspace's own crates come from Cargo.lock). The Rust toolchain has no
/// sha256 pin (rustup installs it), so it is not a pinned package here; its
/// `rustc -vV` is part of the binaries' cache keys.
fn sbom_pins(ctx: &Ctx, recipes: &[&str]) -> Result<Vec<Pin>> {
    let v = &ctx.versions;
    let vsock = &v.vhost_device_vsock;
    let mut pins = vec![
        deb_pin(
            &v.kernel.debian.package,
            &v.kernel.debian.version,
            &v.kernel.debian.sha256.to_string(),
        ),
        deb_pin(
            &v.busybox.debian.package,
            &v.busybox.debian.version,
            &v.busybox.debian.sha256.to_string(),
        ),
        Pin {
            name: vsock.crate_name.clone(),
            version: vsock.version.clone(),
            download_location: crate::runtime_bins::vsock_crate_url(ctx),
            sha256: vsock.sha256.to_string(),
            purl: Some(format!("pkg:cargo/{}@{}", vsock.crate_name, vsock.version)),
        },
    ];
    // The Debian packages inside the shipped guests, from their locks.
    let mut seen = std::collections::BTreeSet::new();
    for r in recipes {
        let (recipe, _) = crate::rootfs::load_recipe(ctx, r)?;
        if let Some((_, lock)) = crate::rootfs::load_lock(ctx, &recipe)? {
            for p in lock.packages {
                if seen.insert((p.name.clone(), p.version.clone())) {
                    pins.push(deb_pin(&p.name, &p.version, &p.sha256));
                }
            }
        }
    }
    Ok(pins)
}

/// The entries the release step packs, all already built.
struct Parts<'a> {
    kernel: &'a Entry,
    initrd: &'a Entry,
    image: &'a Entry,
    bins: &'a Entry,
    vsock: &'a Entry,
    extra_images: Vec<(String, &'a Entry)>,
}

fn release_inputs(
    ctx: &Ctx,
    version: &str,
    epoch: u64,
    p: &Parts,
    configuration_toml: String,
    extra_configurations: Vec<(String, String)>,
) -> ReleaseInputs {
    let stem = kernel::stem(ctx, &kernel_args());
    let vmlinux = format!("vmlinux-{stem}");
    let vmlinuz = format!("vmlinuz-{stem}");
    let image = format!("kata-{RECIPE}-{version}.image");
    let initrd = format!("kata-{RECIPE}-{version}.initrd");
    let mut image_files = vec![
        (image.clone(), p.image.path(image::FILE)),
        (initrd.clone(), p.initrd.path(initrd::FILE)),
    ];
    let mut image_symlinks = vec![
        ("kata-containers.img".into(), image),
        ("kata-containers-initrd.img".into(), initrd),
    ];
    for (recipe, entry) in &p.extra_images {
        let (file, link, _) = extra_guest_names(recipe, version);
        image_files.push((file.clone(), entry.path(image::FILE)));
        image_symlinks.push((link, file));
    }
    ReleaseInputs {
        version: version.into(),
        source_date_epoch: epoch,
        prefix: PREFIX.into(),
        shim: p.bins.path(SHIM),
        runtime: p.bins.path(RUNTIME),
        monitor: p.bins.path(MONITOR),
        helpers: vec![(VSOCK_DAEMON.into(), p.vsock.path(VSOCK_DAEMON))],
        kernel_files: vec![
            (vmlinux.clone(), p.kernel.path("vmlinux")),
            (vmlinuz.clone(), p.kernel.path("bzImage")),
        ],
        kernel_symlinks: vec![
            ("vmlinux.container".into(), vmlinux),
            ("vmlinuz.container".into(), vmlinuz),
        ],
        image_files,
        image_symlinks,
        configuration_toml,
        extra_configurations,
        versions_yaml: ctx.versions_path.clone(),
    }
}

/// configuration.toml for `prefix`, from the template in runtime/config/.
pub fn render_config(ctx: &Ctx, prefix: &str) -> Result<String> {
    render_guest_config(ctx, prefix, None)
}

/// configuration.toml for `prefix` booting `image_link` (a file name in
/// the guest assets dir) instead of the default `kata-containers.img`.
fn render_guest_config(ctx: &Ctx, prefix: &str, image_link: Option<&str>) -> Result<String> {
    let path = template_path(ctx);
    let template =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut vars = BTreeMap::new();
    vars.insert("libexec".to_string(), format!("{prefix}/libexec"));
    if let Some(link) = image_link {
        vars.insert("image".to_string(), link.to_string());
    }
    render_configuration(&template, prefix, &vars)
        .with_context(|| format!("render {}", path.display()))
}

/// The `release` step: every package, checked, into `out`.
fn package(
    ctx: &Ctx,
    version: &str,
    epoch: u64,
    parts: &Parts,
    names: &ReleaseNames,
    out: &Path,
) -> Result<()> {
    let config = render_config(ctx, PREFIX)?;
    std::fs::write(out.join(CONFIG_NAME), &config)?;
    let mut extra_configs = Vec::new();
    for (recipe, _) in &parts.extra_images {
        let (_, link, name) = extra_guest_names(recipe, version);
        let text = render_guest_config(ctx, PREFIX, Some(&link))?;
        std::fs::write(out.join(&name), &text)?;
        extra_configs.push((name, text));
    }
    let inputs = release_inputs(ctx, version, epoch, parts, config, extra_configs);
    // Each writer checks what it writes (and reads it back) for anything
    // that could damage a host: `packaging` alone owns those checks.
    let layout = Layout::from_inputs(&inputs)?;
    let tarball = out.join(&names.tarball);
    let deb = out.join(&names.deb);
    let rpm = out.join(&names.rpm);
    let sbom = out.join(&names.sbom);
    // The three archives compress the same tree each (zstd -19, xz -6,
    // zstd -19), every compressor with one worker per core and output that
    // does not depend on the count (`packaging::compress`): written side
    // by side they keep every core busy until the last one is done.
    let step = ctx.ui.step("release: tarball, .deb and .rpm, in parallel");
    let deb_meta = DebMeta::kata_static(version, MAINTAINER, epoch)?;
    let rpm_meta = RpmMeta::kata_static(version)?;
    let timed = |write: &dyn Fn() -> Result<()>| -> Result<f64> {
        let start = std::time::Instant::now();
        write()?;
        Ok(start.elapsed().as_secs_f64())
    };
    let (tarball_took, deb_took, rpm_took) = std::thread::scope(|s| {
        let tarball_writer = s.spawn(|| timed(&|| write_tarball(&layout, &tarball, epoch)));
        let deb_writer = s.spawn(|| timed(&|| write_deb(&layout, &deb_meta, &deb, epoch)));
        let rpm_took = timed(&|| write_rpm(&layout, &rpm_meta, &rpm, epoch));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<f64>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("an archive writer panicked")))
        };
        (join(tarball_writer), join(deb_writer), rpm_took)
    });
    let (tarball_took, deb_took, rpm_took) = (tarball_took?, deb_took?, rpm_took?);
    step.finish(&format!(
        "written (tarball {tarball_took:.1}s, .deb {deb_took:.1}s, .rpm {rpm_took:.1}s)"
    ));
    let lock = ctx.root.join("Cargo.lock");
    let vsock_lock = parts.vsock.path("Cargo.lock");
    let recipes: Vec<&str> = std::iter::once(RECIPE)
        .chain(parts.extra_images.iter().map(|(r, _)| r.as_str()))
        .collect();
    let sbom_inputs = SbomInputs {
        name: "kata-static".into(),
        version: version.into(),
        pins: sbom_pins(ctx, &recipes)?,
        cargo_lock: &lock,
        helper_locks: vec![HelperLock {
            pin: ctx.versions.vhost_device_vsock.crate_name.clone(),
            cargo_lock: &vsock_lock,
        }],
    };
    write_spdx_sbom(&sbom_inputs, &sbom, epoch)?;
    write_sha256sums(&[&tarball, &deb, &rpm, &sbom], &out.join(CHECKSUMS))?;
    Ok(())
}

/// A published release.
pub struct Built {
    pub version: String,
    /// In dist.
    pub tarball: PathBuf,
    pub deb: PathBuf,
    pub artifacts: Vec<Artifact>,
    pub vsock_target: String,
    /// What each step of the run cost, in the order they ran.
    pub steps: Vec<crate::graph::StepTiming>,
    /// The whole run, publishing included.
    pub seconds: f64,
}

pub fn run(ctx: &Ctx, args: &ReleaseArgs) -> Result<()> {
    let version = release_version(ctx, args)?;
    let extras = extra_recipes(ctx, args)?;
    let mut g = Graph::new();
    let steps = add(&mut g, ctx, version.clone(), &extras)?;
    if g.show_if_dry_run(ctx, &[steps.release])? {
        return Ok(());
    }
    let b = publish_release(ctx, &g, &steps, version)?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "version": b.version,
            "source_date_epoch": ctx.epoch,
            "prefix": PREFIX,
            "vhost_device_vsock_target": b.vsock_target,
            "artifacts": b.artifacts,
            "steps": b.steps,
            "seconds": b.seconds,
        }))?;
    }
    Ok(())
}

/// Builds (or takes from the cache) every step, publishes into dist and
/// records the manifest.
/// The release's vsock daemon entry, built if it is not cached (`test
/// repro` hands it to a clean clone once its rebuild is proven).
pub fn build_vsock(ctx: &Ctx) -> Result<crate::cache::Entry> {
    crate::graph::build_one(ctx, |g| runtime_bins::add_vsock(g, ctx))
}

/// The release's runtime binaries entry (`containerd-shim-kata-v2` and
/// `kata-runtime`, exactly as shipped), built if it is not cached: the
/// test harness runs these instead of compiling a second, differently
/// built shim.
pub fn build_runtime_bins(ctx: &Ctx) -> Result<crate::cache::Entry> {
    crate::graph::build_one(ctx, |g| runtime_bins::add_runtime(g, ctx))
}

pub fn build(ctx: &Ctx, args: &ReleaseArgs) -> Result<Built> {
    let version = release_version(ctx, args)?;
    let extras = extra_recipes(ctx, args)?;
    let mut g = Graph::new();
    let steps = add(&mut g, ctx, version.clone(), &extras)?;
    publish_release(ctx, &g, &steps, version)
}

fn publish_release(ctx: &Ctx, g: &Graph, steps: &ReleaseSteps, version: String) -> Result<Built> {
    let names = ReleaseNames::new(&version)?;
    ctx.ensure_dist_writable()?;
    let started = std::time::Instant::now();
    // The parts are wanted too: the shim and kata-runtime are published
    // from their own entry, and the vsock daemon's target is reported.
    let out = g.run(ctx, &[steps.release, steps.runtime_bins, steps.vsock])?;
    let entry = out.entry(steps.release);
    let bins = out.entry(steps.runtime_bins);
    let vsock_target = std::fs::read_to_string(out.path(steps.vsock, "target")).unwrap_or_default();
    if !vsock_target.is_empty() && vsock_target != ctx.versions.rust.musl_target {
        ctx.ui.info(&format!(
            "warning: {VSOCK_DAEMON} is built for {vsock_target} (dynamically linked), not {}",
            ctx.versions.rust.musl_target
        ));
    }
    let mut arts: Vec<Artifact> = Vec::new();
    let mut add = |name: &str, kind: Kind, entry: &Entry| -> Result<()> {
        let dest = publish::file(ctx, &entry.path(name), name)?;
        arts.push(publish::artifact(
            ctx, name, kind, &dest, entry, name, None,
        )?);
        Ok(())
    };
    add(&names.tarball, Kind::Tarball, entry)?;
    add(&names.deb, Kind::Deb, entry)?;
    add(&names.rpm, Kind::Rpm, entry)?;
    add(&names.sbom, Kind::Sbom, entry)?;
    add(CHECKSUMS, Kind::Checksums, entry)?;
    add(CONFIG_NAME, Kind::Config, entry)?;
    for (recipe, _) in &steps.extra_images {
        let (_, _, name) = extra_guest_names(recipe, &version);
        add(&name, Kind::Config, entry)?;
    }
    add(SHIM, Kind::Shim, bins)?;
    add(RUNTIME, Kind::Runtime, bins)?;
    add(MONITOR, Kind::Monitor, bins)?;
    Manifest::record(&ctx.dist(), &version, ctx.epoch, arts.clone())?;
    for a in &arts {
        ctx.ui
            .info(&format!("release: {} ({} bytes)", a.path, a.bytes));
    }
    let seconds = started.elapsed().as_secs_f64();
    ctx.ui.info(&format!(
        "release {version}: done in {seconds:.1}s; check with `sha256sum -c {CHECKSUMS}` in {}",
        ctx.rel(&ctx.dist())
    ));
    Ok(Built {
        tarball: ctx.dist().join(&names.tarball),
        deb: ctx.dist().join(&names.deb),
        version,
        artifacts: arts,
        vsock_target,
        steps: out.timings.clone(),
        seconds,
    })
}
