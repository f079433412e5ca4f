//! The host-side binaries a release ships, as cached steps:
//!
//! - `runtime-bins`: `containerd-shim-kata-v2`, `kata-runtime` and
//!   `kata-monitor`, static
//!   (musl), built from this workspace in a target dir of their own
//!   (`target/release-build`), so the build never waits on the lock of the
//!   cargo that runs xtask.
//! - `vhost-device-vsock`: the rust-vmm daemon serving the agent's vsock
//!   channel where the host has no `/dev/vhost-vsock`, built from the crate
//!   pinned in `versions.yaml` with the patches of
//!   `vhost-device-vsock/patches/<version>/` applied, with
//!   `cargo install --locked --path`.
//!
//! Both are built with `--remap-path-prefix` for the clone, the cargo home
//! and (for the crate) the temporary target dir, so two clones in different
//! directories produce the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::graph::{Graph, StepId};
use crate::tools::run_logged;
use crate::{elf, host_tools};

// 2: kata-monitor too.
// 3: the workspace's `runtime` profile (size-tuned, quicker to compile).
const RUNTIME_FORMAT: u32 = 3;
// 2: the entry keeps the crate's Cargo.lock (for the SBOM).
// 3: built from the verified .crate with this project's patches applied.
const VSOCK_FORMAT: u32 = 3;

pub const SHIM: &str = "containerd-shim-kata-v2";
pub const RUNTIME: &str = "kata-runtime";
pub const MONITOR: &str = "kata-monitor";
pub const VSOCK_DAEMON: &str = "vhost-device-vsock";
/// `<root>/vhost-device-vsock/patches/<version>/*.patch`: what this project
/// changes in the pinned crate. The series is named by the crate version, so
/// bumping the pin without reviewing the patches fails instead of silently
/// shipping an unpatched daemon.
pub const VSOCK_PATCHES_DIR: &str = "vhost-device-vsock";

pub(crate) fn cargo_home() -> String {
    std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()))
}

/// `CARGO_TARGET_<TRIPLE>_RUSTFLAGS`: applies to the target's crates only,
/// never to build scripts run on the host.
pub(crate) fn rustflags_env(target: &str) -> String {
    format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.to_uppercase().replace('-', "_")
    )
}

/// A binary that a static musl build must have produced.
pub(crate) fn require_static(path: &Path) -> Result<()> {
    let facts = elf::inspect(path)?;
    if facts.has_interpreter || facts.needed_libraries > 0 {
        bail!(
            "{} is not static (interpreter: {}, needed libraries: {})",
            path.display(),
            facts.has_interpreter,
            facts.needed_libraries
        );
    }
    Ok(())
}

/// The cargo profile of `runtime-bins` (the workspace's Cargo.toml says why).
const RUNTIME_PROFILE: &str = "runtime";

/// Shipped host binaries carry no symbol tables (Debian policy; lintian's
/// unstripped-binary-or-object). The `runtime` profile says so itself; for
/// `cargo install` of a crate we do not control it is set through cargo's
/// profile environment.
const STRIP_ENV: &str = "CARGO_PROFILE_RELEASE_STRIP";
const STRIP: &str = "symbols";

pub fn release_target_dir(ctx: &Ctx) -> PathBuf {
    ctx.root.join("target").join("release-build")
}

/// The `runtime-bins` step: the shim, kata-runtime and kata-monitor, static.
pub fn add_runtime<'g>(g: &mut Graph<'g>, ctx: &'g Ctx) -> Result<StepId> {
    if let Some(id) = g.find("runtime-bins") {
        return Ok(id);
    }
    let d = &ctx.digests;
    let mut i = StepInputs::new("runtime-bins", RUNTIME_FORMAT);
    i.tree(d, "src.runtime", &ctx.root.join("runtime"))?
        .tree(d, "src.protocols", &ctx.root.join("protocols"))?
        .tree(d, "src.rtnl", &ctx.root.join("rtnl"))?
        .file(d, "Cargo.lock", &ctx.root.join("Cargo.lock"))?
        .file(d, "Cargo.toml", &ctx.root.join("Cargo.toml"))?
        .value("rustc", d.tool_version("rustc", "-vV"))
        .value("target", &ctx.versions.rust.musl_target)
        // Its settings (stripping too) are in Cargo.toml, an input above.
        .value("profile", RUNTIME_PROFILE);
    Ok(g.add(
        "runtime-bins",
        i,
        &[],
        &[host_tools::MUSL_GCC],
        move |_, out| build_runtime_into(ctx, out),
    ))
}

fn build_runtime_into(ctx: &Ctx, out: &Path) -> Result<()> {
    let target = &ctx.versions.rust.musl_target;
    let log = crate::tools::fresh_log(&ctx.logs().join("runtime-bins.log"))?;
    let flags = format!(
        "--remap-path-prefix={}=/kata --remap-path-prefix={}=/cargo",
        ctx.root.display(),
        cargo_home()
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--profile",
        RUNTIME_PROFILE,
        "--locked",
        "-p",
        "kata-runtime",
        "--bins",
        "--target",
        target,
    ])
    .env(rustflags_env(target), flags)
    .env("CARGO_TARGET_DIR", release_target_dir(ctx))
    .current_dir(&ctx.root);
    if ctx.offline {
        cmd.arg("--offline");
    }
    run_logged(&mut cmd, &log).context(
        "building kata-runtime's binaries (is the musl target installed? `cargo xtask doctor`)",
    )?;
    let built = release_target_dir(ctx).join(target).join(RUNTIME_PROFILE);
    for name in [SHIM, RUNTIME, MONITOR] {
        require_static(&built.join(name))?;
        std::fs::copy(built.join(name), out.join(name))?;
    }
    Ok(())
}

/// The patches carried on the pinned crate, in application order (the same
/// `patch` helper the kernel's patches go through).
pub fn vsock_patches(ctx: &Ctx) -> Result<kernel_builder::Patches> {
    kernel_builder::Patches::load(
        &ctx.root.join(VSOCK_PATCHES_DIR),
        &ctx.versions.vhost_device_vsock.version,
    )
    .map_err(crate::kernel::kernel_err)
}

/// The `vhost-device-vsock` step: the pinned crate with its patches, built
/// with `cargo install --locked`. The crate is an input by its sha256 (the
/// build checks the `.crate` it unpacks against it), the patches by their
/// contents. Its entry also keeps the crate's `Cargo.lock` (the SBOM lists
/// its crates) and `target`, the target it was built for.
pub fn add_vsock<'g>(g: &mut Graph<'g>, ctx: &'g Ctx) -> Result<StepId> {
    if let Some(id) = g.find(VSOCK_DAEMON) {
        return Ok(id);
    }
    let pin = &ctx.versions.vhost_device_vsock;
    let patches = vsock_patches(ctx)?;
    let mut i = StepInputs::new(VSOCK_DAEMON, VSOCK_FORMAT);
    i.value("crate", &pin.crate_name)
        .value("crate.version", &pin.version)
        .value("crate.sha256", &pin.sha256)
        .value("rustc", ctx.digests.tool_version("rustc", "-vV"))
        .value("target", &ctx.versions.rust.musl_target)
        .value("locked", true)
        .value("strip", STRIP);
    for (rel, path) in patches.input_files() {
        i.file(&ctx.digests, &format!("patch:{rel}"), &path)?;
    }
    Ok(g.add(
        VSOCK_DAEMON,
        i,
        &[],
        &[host_tools::MUSL_GCC, host_tools::TAR, host_tools::PATCH],
        move |_, out| build_vsock_into(ctx, &patches, out),
    ))
}

/// The pinned `.crate`'s download location on crates.io, as the SBOM names
/// every crate's.
pub fn vsock_crate_url(ctx: &Ctx) -> String {
    let pin = &ctx.versions.vhost_device_vsock;
    format!(
        "https://crates.io/api/v1/crates/{}/{}/download",
        pin.crate_name, pin.version
    )
}

/// Where the pinned `.crate` is fetched from: crates.io's static host, the
/// one cargo itself downloads from (the index's `dl`). The API address only
/// redirects there, and a network that lets cargo through (index and static
/// hosts) may not resolve the API host at all.
fn vsock_crate_fetch_url(ctx: &Ctx) -> String {
    let pin = &ctx.versions.vhost_device_vsock;
    format!(
        "https://static.crates.io/crates/{0}/{0}-{1}.crate",
        pin.crate_name, pin.version
    )
}

/// The pinned `.crate`, verified: cargo's own download cache when it holds
/// the pinned bytes (so `--offline` works after any cargo build that fetched
/// it), else the project cache, else crates.io.
fn pinned_crate(ctx: &Ctx) -> Result<PathBuf> {
    let pin = &ctx.versions.vhost_device_vsock;
    let file_name = format!("{}-{}.crate", pin.crate_name, pin.version);
    let registry = Path::new(&cargo_home()).join("registry").join("cache");
    if let Ok(indexes) = std::fs::read_dir(&registry) {
        for index in indexes.flatten() {
            let candidate = index.path().join(&file_name);
            if candidate.is_file() && crate::hash::file_sha256(&candidate)? == pin.sha256.as_str() {
                return Ok(candidate);
            }
        }
    }
    ctx.fetcher()?.url(
        "vhost_device_vsock",
        &vsock_crate_fetch_url(ctx),
        Some(&pin.sha256),
    )
}

fn build_vsock_into(ctx: &Ctx, patches: &kernel_builder::Patches, out: &Path) -> Result<()> {
    let pin = &ctx.versions.vhost_device_vsock;
    let musl = &ctx.versions.rust.musl_target;
    let cache = ctx.cache()?;
    let log = crate::tools::fresh_log(&ctx.logs().join("vhost-device-vsock.log"))?;
    let work = cache.temp_dir("vhost-device-vsock-build")?;
    let crate_file = pinned_crate(ctx)?;
    let unpacked = work.path().join("src");
    std::fs::create_dir_all(&unpacked)?;
    run_logged(
        Command::new("tar")
            .arg("-xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(&unpacked),
        &log,
    )
    .with_context(|| format!("unpack {}", crate_file.display()))?;
    let crate_dir = format!("{}-{}", pin.crate_name, pin.version);
    let src = unpacked.join(&crate_dir);
    {
        let mut patch_log = std::fs::OpenOptions::new().append(true).open(&log)?;
        kernel_builder::apply_patches(&src, patches, &mut patch_log)
            .map_err(crate::kernel::kernel_err)?;
    }
    let target_dir = work.path().join("target");
    let root = work.path().join("root");
    let install = |target: &str| -> Result<()> {
        // The unpacked source and the target dir are fresh temp dirs each
        // time: their paths must not reach the binary.
        let flags = format!(
            "--remap-path-prefix={}=/src/{crate_dir} --remap-path-prefix={}=/target --remap-path-prefix={}=/cargo",
            src.display(),
            target_dir.display(),
            cargo_home()
        );
        let mut cmd = Command::new("cargo");
        cmd.arg("install")
            .arg("--locked")
            .arg("--root")
            .arg(&root)
            .arg("--path")
            .arg(&src)
            .args(["--target", target])
            .env(rustflags_env(target), flags)
            .env(STRIP_ENV, STRIP)
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(work.path());
        if ctx.offline {
            cmd.arg("--offline");
        }
        run_logged(&mut cmd, &log)
    };
    let target = match install(musl) {
        Ok(()) => musl.clone(),
        Err(e) => {
            // Not expected (0.3.0 builds for musl); a dynamic daemon is
            // better than no release, but it is said loudly.
            ctx.ui.info(&format!(
                "warning: {VSOCK_DAEMON} does not build for {musl} ({e:#}); building it for x86_64-unknown-linux-gnu (dynamically linked)"
            ));
            install("x86_64-unknown-linux-gnu")?;
            "x86_64-unknown-linux-gnu".to_string()
        }
    };
    // `cargo install --locked` built exactly the crates of the lock file
    // inside the verified .crate; the SBOM lists them.
    let lock = src.join("Cargo.lock");
    std::fs::copy(&lock, out.join("Cargo.lock")).with_context(|| {
        format!(
            "{} has no Cargo.lock to list its crates in the SBOM",
            crate_file.display()
        )
    })?;
    let built = root.join("bin").join(VSOCK_DAEMON);
    if target == *musl {
        require_static(&built)?;
    }
    std::fs::copy(&built, out.join(VSOCK_DAEMON))?;
    std::fs::write(out.join("target"), &target)?;
    Ok(())
}
