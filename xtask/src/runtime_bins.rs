//! The host-side binaries a release ships, as cached steps:
//!
//! - `runtime-bins`: `containerd-shim-kata-v2` and `kata-runtime`, static
//!   (musl), built from this workspace in a target dir of their own
//!   (`target/release-build`), so the build never waits on the lock of the
//!   cargo that runs xtask.
//! - `vhost-device-vsock`: the rust-vmm daemon serving the agent's vsock
//!   channel where the host has no `/dev/vhost-vsock`, built from the crate
//!   pinned in `versions.yaml` with `cargo install --locked`.
//!
//! Both are built with `--remap-path-prefix` for the clone, the cargo home
//! and (for the crate) the temporary target dir, so two clones in different
//! directories produce the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::tools::{run_captured, run_logged, version_line};
use crate::{elf, publish};

const RUNTIME_FORMAT: u32 = 1;
// 2: the entry keeps the crate's Cargo.lock (for the SBOM).
const VSOCK_FORMAT: u32 = 2;

pub const SHIM: &str = "containerd-shim-kata-v2";
pub const RUNTIME: &str = "kata-runtime";
pub const VSOCK_DAEMON: &str = "vhost-device-vsock";

pub struct RuntimeBins {
    pub shim: PathBuf,
    pub runtime: PathBuf,
    pub key: String,
}

pub struct VsockDaemon {
    pub binary: PathBuf,
    /// The crate's own lock file: what `cargo install --locked` built.
    pub cargo_lock: PathBuf,
    pub key: String,
    /// The target it was built for (musl unless that failed; see `build_vsock_daemon`).
    pub target: String,
}

fn cargo_home() -> String {
    std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()))
}

/// `CARGO_TARGET_<TRIPLE>_RUSTFLAGS`: applies to the target's crates only,
/// never to build scripts run on the host.
fn rustflags_env(target: &str) -> String {
    format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.to_uppercase().replace('-', "_")
    )
}

/// A binary that a static musl build must have produced.
fn require_static(path: &Path) -> Result<()> {
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

/// Shipped host binaries carry no symbol tables (Debian policy; lintian's
/// unstripped-binary-or-object). Set through cargo's profile environment so
/// that it also holds for `cargo install` of a crate we do not control.
const STRIP_ENV: &str = "CARGO_PROFILE_RELEASE_STRIP";
const STRIP: &str = "symbols";

pub fn release_target_dir(ctx: &Ctx) -> PathBuf {
    ctx.root.join("target").join("release-build")
}

pub fn runtime_inputs(ctx: &Ctx) -> Result<StepInputs> {
    let mut i = StepInputs::new("runtime-bins", RUNTIME_FORMAT);
    i.tree("src.runtime", &ctx.root.join("runtime"))?
        .tree("src.protocols", &ctx.root.join("protocols"))?
        .file("Cargo.lock", &ctx.root.join("Cargo.lock"))?
        .file("Cargo.toml", &ctx.root.join("Cargo.toml"))?
        .value("rustc", version_line("rustc", "-vV")?)
        .value("target", &ctx.versions.rust.musl_target)
        .value("profile", "release")
        .value("strip", STRIP);
    Ok(i)
}

pub fn build_runtime(ctx: &Ctx) -> Result<RuntimeBins> {
    let inputs = runtime_inputs(ctx)?;
    let target = ctx.versions.rust.musl_target.clone();
    let log = ctx.logs().join("runtime-bins.log");
    let progress = ctx.ui.step("runtime-bins");
    let entry = ctx.cache()?.step(&inputs, &ctx.ui, |out| {
        crate::tools::fresh_log(&log)?;
        let flags = format!(
            "--remap-path-prefix={}=/kata --remap-path-prefix={}=/cargo",
            ctx.root.display(),
            cargo_home()
        );
        let mut cmd = Command::new("cargo");
        cmd.args([
            "build",
            "--release",
            "--locked",
            "-p",
            "kata-runtime",
            "--bins",
            "--target",
            &target,
        ])
        .env(rustflags_env(&target), flags)
        .env(STRIP_ENV, STRIP)
        .env("CARGO_TARGET_DIR", release_target_dir(ctx))
        .current_dir(&ctx.root);
        if ctx.offline {
            cmd.arg("--offline");
        }
        run_logged(&mut cmd, &log).context(
            "building kata-runtime's binaries (is the musl target installed? `cargo xtask doctor`)",
        )?;
        let built = release_target_dir(ctx).join(&target).join("release");
        for name in [SHIM, RUNTIME] {
            require_static(&built.join(name))?;
            std::fs::copy(built.join(name), out.join(name))?;
            publish::seal(&out.join(name))?;
        }
        Ok(())
    })?;
    progress.finish(if entry.hit { "cached" } else { "built" });
    Ok(RuntimeBins {
        shim: entry.dir.join(SHIM),
        runtime: entry.dir.join(RUNTIME),
        key: entry.key,
    })
}

/// The crate pin is an input by its sha256: cargo verifies the downloaded
/// `.crate` against the checksum in the crates.io index, and the build
/// checks that the `.crate` cargo used has the pinned digest (see
/// `check_crate_pin`), so a re-published or re-pinned crate is a new key.
pub fn vsock_inputs(ctx: &Ctx) -> Result<StepInputs> {
    let pin = &ctx.versions.vhost_device_vsock;
    let mut i = StepInputs::new("vhost-device-vsock", VSOCK_FORMAT);
    i.value("crate", &pin.crate_name)
        .value("crate.version", &pin.version)
        .value("crate.sha256", &pin.sha256)
        .value("rustc", version_line("rustc", "-vV")?)
        .value("target", &ctx.versions.rust.musl_target)
        .value("locked", true)
        .value("strip", STRIP);
    Ok(i)
}

/// The `.crate` file cargo downloaded must be the pinned one.
fn check_crate_pin(ctx: &Ctx) -> Result<PathBuf> {
    let pin = &ctx.versions.vhost_device_vsock;
    let file_name = format!("{}-{}.crate", pin.crate_name, pin.version);
    let cache = Path::new(&cargo_home()).join("registry").join("cache");
    let found = std::fs::read_dir(&cache)
        .with_context(|| {
            format!(
                "{}: cargo's registry cache is missing after cargo install",
                cache.display()
            )
        })?
        .flatten()
        .map(|e| e.path().join(&file_name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{file_name} is not in {} after cargo install",
                cache.display()
            )
        })?;
    let got = crate::hash::file_sha256(&found)?;
    if got != pin.sha256.as_str() {
        bail!(
            "{} has sha256 {got} but versions.yaml pins vhost_device_vsock.sha256 {}; \
             re-pin with `cargo xtask versions --update vhost_device_vsock` only if the new crate is trusted",
            found.display(),
            pin.sha256
        );
    }
    Ok(found)
}

pub fn build_vsock_daemon(ctx: &Ctx) -> Result<VsockDaemon> {
    let inputs = vsock_inputs(ctx)?;
    let pin = ctx.versions.vhost_device_vsock.clone();
    let musl = ctx.versions.rust.musl_target.clone();
    let log = ctx.logs().join("vhost-device-vsock.log");
    let cache = ctx.cache()?;
    let progress = ctx.ui.step(&format!("{VSOCK_DAEMON} {}", pin.version));
    let entry = cache.step(&inputs, &ctx.ui, |out| {
        crate::tools::fresh_log(&log)?;
        let work = cache.temp_dir("vhost-device-vsock-build")?;
        let target_dir = work.path().join("target");
        let root = work.path().join("root");
        let install = |target: &str| -> Result<()> {
            // The target dir is a fresh temp dir each time: its path must not
            // reach the binary either.
            let flags = format!(
                "--remap-path-prefix={}=/target --remap-path-prefix={}=/cargo",
                target_dir.display(),
                cargo_home()
            );
            let mut cmd = Command::new("cargo");
            cmd.arg("install")
                .arg("--locked")
                .arg("--root")
                .arg(&root)
                .args([pin.crate_name.as_str(), "--version", pin.version.as_str(), "--target", target])
                .env(rustflags_env(target), flags)
                .env(STRIP_ENV, STRIP)
                .env("CARGO_TARGET_DIR", &target_dir)
                .current_dir(work.path());
            if ctx.offline {
                cmd.arg("--offline");
            }
            run_logged(&mut cmd, &log)
        };
        let target = match install(&musl) {
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
        let crate_file = check_crate_pin(ctx)?;
        // `cargo install --locked` built exactly the crates of the lock file
        // inside the verified .crate; the SBOM lists them.
        let lock = run_captured(
            Command::new("tar")
                .arg("-xzOf")
                .arg(&crate_file)
                .arg(format!("{}-{}/Cargo.lock", pin.crate_name, pin.version)),
        )
        .with_context(|| format!("{} has no Cargo.lock to list its crates in the SBOM", crate_file.display()))?;
        std::fs::write(out.join("Cargo.lock"), lock)?;
        let built = root.join("bin").join(VSOCK_DAEMON);
        if target == musl {
            require_static(&built)?;
        }
        std::fs::copy(&built, out.join(VSOCK_DAEMON))?;
        std::fs::write(out.join("target"), &target)?;
        publish::seal(&out.join(VSOCK_DAEMON))
    })?;
    progress.finish(if entry.hit { "cached" } else { "built" });
    let target = std::fs::read_to_string(entry.dir.join("target")).unwrap_or_default();
    Ok(VsockDaemon {
        binary: entry.dir.join(VSOCK_DAEMON),
        cargo_lock: entry.dir.join("Cargo.lock"),
        key: entry.key,
        target,
    })
}
