//! `cargo xtask test e2e [--faults] [--scenario NAME]... [--shim PATH] [--keep] [--json]`: runs
//! containers through a real, private containerd with the built
//! `containerd-shim-kata-v2`, using `ctr` as users do.
//!
//! Files: this one holds the command, the environment (containerd, image,
//! shim and configuration ready for scenarios) and the Kata configuration;
//! `containerd.rs` the private containerd and `ctr`, `oci_image.rs` the test
//! image, `scenarios.rs` the scenarios and faults, `pod.rs` the pod
//! scenarios (Task.Update, OOM events, shared namespaces), `shipped.rs`
//! `--from-release`, `host.rs` /proc and mount inspection, `bounded.rs`
//! commands with a time bound.
//!
//! The harness owns everything it starts: a containerd with its own root,
//! state dir, socket and config under a temp dir, and a small OCI image
//! (busybox and its applet links) written here as an OCI layout archive and
//! imported with `ctr images import` (no registry is needed). A guard stops
//! containerd, kills any process of ours still alive, unmounts what is left
//! under the temp dir and removes it, also when a scenario fails.
//!
//! "Ours" is decided without guessing from names: containerd is started with
//! a per-run marker in its environment ([`RUN_MARKER_ENV`]); shims inherit
//! containerd's environment and pass it on to QEMU, virtiofsd and
//! vhost-device-vsock. Processes with a watched name that started after our
//! containerd and name one of our container ids on their command line count
//! too, for children started with a scrubbed environment.
//!
//! `--runtime io.containerd.runc.v2` (hidden, diagnostic) runs the same
//! scenarios with runc, which proves the harness itself; the guest kernel
//! check then asserts the host kernel instead, and the QEMU fault is skipped.
//!
//! Shim configuration: the harness writes a `configuration.toml` into its
//! temp dir and hands it to the shim through `KATA_CONF_FILE` in
//! containerd's environment. It is written through the runtime's schema type
//! (`runtime::config::ConfigFile`, upstream's defaults) and read back with
//! the runtime's loader before use. Keys set (Kata's names):
//!   [hypervisor.qemu] path, kernel, initrd | image, machine_type,
//!                     kernel_params, default_vcpus, default_memory,
//!                     shared_fs = "virtio-fs", virtio_fs_daemon,
//!                     virtio_fs_cache, enable_debug, rootfs_type (image),
//!                     and this project's extensions accelerator = "tcg",
//!                     vhost_user_vsock_daemon
//!   [agent.kata]      enable_debug, dial_timeout (p-debug-console writes a
//!                     second file with debug_console_enabled = true and
//!                     names it with `ctr run --runtime-config-path`)
//!   [runtime]         enable_debug, internetworking_model,
//!                     sandbox_cgroup_only, static_sandbox_resource_mgmt
//!
//! `--from-release` runs the scenarios with only what a release ships: the
//! release is built (cached steps), its tarball unpacked under a temp dir,
//! and the shim, kernel, image, vsock daemon and configuration.toml taken
//! from there (see [`from_release`]); `--install-deb` installs the .deb into
//! the host's real /opt/kata instead and purges it afterwards (opt-in; `test
//! all` runs it when root).
//!
//! For `cargo xtask bench` this module exposes [`E2eEnv::start`],
//! [`E2eEnv::time_run_true`] (one `ctr run --rm IMAGE true` with a given
//! runtime) and [`sandbox_footprint`] (PSS of a running sandbox's shim and
//! its QEMU, virtiofsd and vsock daemon).

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::vmtest::{self, Media};
use xtask::context::Ctx;
use xtask::error::InputError;

pub(crate) mod bounded;
pub(crate) mod containerd;
pub(crate) mod host;
pub mod network;
pub(crate) mod oci_image;
mod operate;
mod pod;
mod scenarios;
mod shipped;
pub(crate) mod template;
mod volumes;

pub use bounded::run_bounded;
use containerd::{ContainerdSetup, Ctr, PrivateContainerd};
use host::{all_procs, descendants, mapping_rss_kib, pss_kib};
use oci_image::{image_busybox, import_image, write_oci_archive, OciImage};
pub(crate) use scenarios::wait_no_leftovers;
use scenarios::{
    fault_agent_silent, fault_containerd_restarted, fault_hostile_ids, fault_invalid_spec,
    fault_qemu_killed, fault_shim_killed, fault_virtiofsd_killed, fault_vsock_daemon_killed,
    host_kernel, scenario_debug_console, scenario_detached_exec_kill, scenario_exit_code,
    scenario_kernel, scenario_no_leftovers, scenario_one_char_id, scenario_probe_once,
    scenario_seccomp, scenario_stdio, Runner, AGENT_REQUEST_TIMEOUT,
};
use shipped::{from_release, ShippedTree};

pub const KATA_RUNTIME: &str = "io.containerd.kata.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// The binary containerd derives from [`KATA_RUNTIME`] and looks up on PATH.
pub const SHIM_BINARY: &str = "containerd-shim-kata-v2";
pub const IMAGE_BASE_NAME: &str = "localhost/kata-e2e";
pub const IMAGE_TAG: &str = "latest";
pub const NAMESPACE: &str = "e2e";
/// Set in containerd's environment (and so inherited by every shim and its
/// children) to tell our processes from anyone else's.
pub const RUN_MARKER_ENV: &str = "KATA_E2E_RUN";
/// Kata's first configuration lookup.
pub const KATA_CONF_ENV: &str = runtime::config::CONF_FILE_ENV;
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// Where a containerd shim (Go's and the containerd-shim crate's) puts its
/// socket: `<root>/s/<sha256(address/namespace/id)>`, whatever containerd's
/// own state dir is.
const SHIM_SOCKET_ROOT: &str = "/run/containerd/s";
/// Per-sandbox state of the kata shim (design §5).
const KATA_STATE_ROOT: &str = "/run/kata-containers";
/// Process names whose survival after a scenario is a leak.
const WATCHED_PROGRAMS: &[&str] = &[
    "qemu-system-x86_64",
    "virtiofsd",
    "vhost-device-vsock",
    SHIM_BINARY,
    "containerd-shim-runc-v2",
];
/// Applet links in the test image (all resolve to /bin/busybox).
const APPLETS: &[&str] = &[
    "cat", "date", "echo", "env", "false", "grep", "head", "hostname", "httpd", "id", "ip", "ls",
    "mkdir", "nc", "ping", "ps", "pwd", "rm", "sed", "sh", "sleep", "tail", "true", "uname",
];

/// A ctr command with the kata runtime boots a VM under TCG on a loaded
/// 2-core machine; runc needs a fraction of this.
const KATA_COMMAND_TIMEOUT: Duration = Duration::from_secs(240);
const RUNC_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const CONTAINERD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINERD_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_TAIL_LINES: usize = 25;

#[derive(Args, Clone)]
pub struct E2eArgs {
    /// Use this containerd-shim-kata-v2 instead of building it with cargo.
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,
    /// Keep the temp dir (containerd root and state, configs, image archive)
    /// for inspection. Processes and mounts are cleaned up regardless.
    #[arg(long)]
    pub keep: bool,
    /// Also run the fault scenarios (QEMU killed under a container, invalid specs).
    #[arg(long)]
    pub faults: bool,
    /// Boot the DAX rootfs image instead of the initrd.
    #[arg(long)]
    pub image: bool,
    /// The guest recipe. With --from-release, a recipe other than `minimal`
    /// is shipped too (`release --recipes minimal,RECIPE`) and its
    /// configuration-RECIPE.toml is the one run.
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
    /// Diagnostic: run the scenarios with another runtime
    /// (io.containerd.runc.v2 proves the harness without the shim).
    #[arg(long, hide = true, default_value = KATA_RUNTIME)]
    pub runtime: String,
    /// Run with only what the release ships: `cargo xtask release` (cached
    /// steps), unpack its tarball into a temp prefix and use that tree's shim,
    /// kernel, image, vsock daemon and configuration.toml (re-rooted there).
    #[arg(long)]
    pub from_release: bool,
    /// With --from-release: `dpkg -i` the release's .deb instead, which
    /// installs into the real /opt/kata of this host (root; refused when the
    /// package or /opt/kata is already there), run with the installed
    /// configuration, then `dpkg --purge` it and check nothing is left.
    #[arg(long, requires = "from_release")]
    pub install_deb: bool,
    /// Run only this scenario (repeatable), e.g. `--scenario p-debug-console`.
    #[arg(long, value_name = "NAME")]
    pub scenario: Vec<String>,
    /// Start sandboxes from a VM template: `[factory] enable_template`,
    /// `kata-runtime factory init` before the scenarios, the template
    /// scenarios (t-*) after them, `factory destroy` at the end.
    #[arg(long)]
    pub template: bool,
}

impl Default for E2eArgs {
    fn default() -> Self {
        E2eArgs {
            shim: None,
            keep: false,
            faults: false,
            image: false,
            recipe: "minimal".into(),
            runtime: KATA_RUNTIME.into(),
            from_release: false,
            install_deb: false,
            scenario: Vec::new(),
            template: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Shim, guest and the Kata configuration
// ---------------------------------------------------------------------------

/// The shim binary: `--shim PATH`, else the release's: the `runtime-bins`
/// step's static musl build, from the cache when this checkout's inputs
/// are unchanged (after a release or a `test unit`, CI's e2e stages build
/// nothing).
pub fn shim_binary(ctx: &Ctx, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(InputError::new(format!(
                "--shim {}: no such file; pass the built {SHIM_BINARY}",
                p.display()
            ))
            .into());
        }
        return Ok(std::fs::canonicalize(p)?);
    }
    let entry = xtask::release::build_runtime_bins(ctx)?;
    let bin = entry.path(SHIM_BINARY);
    if !bin.is_file() {
        bail!(
            "the runtime-bins cache entry {} has no {SHIM_BINARY}",
            entry.path("").display()
        );
    }
    Ok(bin)
}

/// `configuration.toml` for the shim (Kata's section and key names; see the
/// module doc for the list this harness relies on), with upstream's and the
/// shipped `internetworking_model = "tcfilter"`: a container with a pod
/// network namespace gets its interfaces, one without gets no NIC.
pub fn kata_configuration(guest: &vmtest::Guest, template: Option<&Path>) -> Result<String> {
    let qemu = xtask::tools::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")?;
    if !Path::new(VIRTIOFSD).is_file() {
        bail!("{VIRTIOFSD} is missing: apt-get install qemu-system-common (virtiofsd shares the container rootfs)");
    }
    // Our extension key; without /dev/vhost-vsock the shim needs it, and
    // the harness names the release's daemon (not one on containerd's PATH).
    let vsock_daemon = Some(guest.vsock_daemon.clone());
    harness_configuration(&qemu, &guest.kernel, &guest.boot, vsock_daemon, template)
}

/// The harness's configuration, written through the runtime's own schema
/// type ([`runtime::config::ConfigFile`]: upstream's defaults, the test's
/// binaries and guest) and read back with the runtime's loader, so the
/// shim is handed a file it accepts as it is meant.
fn harness_configuration(
    qemu: &Path,
    kernel: &Path,
    boot: &runtime::hypervisor::BootMedia,
    vsock_daemon: Option<PathBuf>,
    template: Option<&Path>,
) -> Result<String> {
    use runtime::hypervisor::{BootMedia, ImageFs};
    let mut file = runtime::config::ConfigFile::default();
    let q = &mut file.hypervisor.qemu;
    q.path = qemu.to_owned();
    q.kernel = kernel.to_owned();
    match boot {
        BootMedia::Initrd(p) => q.initrd = Some(p.clone()),
        BootMedia::Image { path, fs, .. } => {
            q.image = Some(path.clone());
            q.rootfs_type = match fs {
                ImageFs::Ext4 => "ext4",
                ImageFs::Erofs => "erofs",
            }
            .into();
        }
    }
    q.machine_type = "q35".into();
    q.kernel_params = Vec::new();
    q.default_vcpus = 1;
    q.default_memory = 512;
    q.shared_fs = "virtio-fs".into();
    q.virtio_fs_daemon = VIRTIOFSD.into();
    q.virtio_fs_cache = "auto".into();
    q.enable_debug = true;
    // Our extensions (runtime/src/config.rs): KVM guests crash on the CI
    // hosts, so no probe: TCG.
    q.accelerator = "tcg".into();
    q.vhost_user_vsock_daemon = vsock_daemon;
    let a = &mut file.agent.kata;
    a.enable_debug = true;
    // Seconds; a TCG boot on a loaded CI machine is slow.
    a.dial_timeout = 120;
    // Our extension: the bound of each agent call (f-agent-silent relies on it).
    a.request_timeout = AGENT_REQUEST_TIMEOUT.as_secs();
    let r = &mut file.runtime;
    r.enable_debug = true;
    r.internetworking_model = "tcfilter".into();
    r.sandbox_cgroup_only = false;
    // The guest enforces containers' seccomp profiles (h-seccomp checks
    // it; the shipped file keeps upstream's true, which the
    // --from-release run checks).
    r.disable_guest_seccomp = false;
    r.static_sandbox_resource_mgmt = true;
    if let Some(dir) = template {
        file.factory.enable_template = true;
        file.factory.template_path = dir.to_owned();
    }

    let body = file
        .to_toml()
        .context("cannot write the e2e configuration.toml")?;
    let text = format!("# Written by `cargo xtask test e2e` for its private containerd.\n{body}");
    let back = runtime::config::parse(&text, Path::new("e2e configuration.toml"))
        .context("the runtime refuses the e2e configuration.toml")?;
    if back.to_file() != file || !back.ignored.is_empty() {
        bail!(
            "the e2e configuration.toml does not read back as written (ignored: {:?}):\n{text}",
            back.ignored
        );
    }
    Ok(text)
}

// ---------------------------------------------------------------------------
// The environment: containerd + image (+ shim) ready for scenarios
// ---------------------------------------------------------------------------

pub struct EnvOptions {
    /// Set up the kata runtime (shim, guest, configuration.toml).
    pub kata: bool,
    pub shim: Option<PathBuf>,
    pub media: Media,
    pub recipe: String,
    pub keep: bool,
    /// Names the run's files in the logs dir (`<log_name>-containerd.log`,
    /// `-containerd.toml`, `-configuration.toml`), so that a later run of
    /// another kind does not overwrite the log a failure points at.
    pub log_name: &'static str,
    /// `[factory] enable_template = true` with this template_path.
    pub template: Option<PathBuf>,
}

pub struct E2eEnv {
    pub containerd: PrivateContainerd,
    pub image: OciImage,
    pub shim: Option<PathBuf>,
    pub kata_config: Option<PathBuf>,
}

impl E2eEnv {
    /// Builds what is needed, starts containerd and imports the image.
    pub fn start(ctx: &Ctx, opts: &EnvOptions) -> Result<E2eEnv> {
        // Everything built before containerd starts: a build failure must
        // not leave a containerd behind, and builds are slow.
        let kata = if opts.kata {
            let shim = shim_binary(ctx, opts.shim.as_deref())?;
            let guest = vmtest::prepare(ctx, opts.media, &opts.recipe)?;
            Some((shim, kata_configuration(&guest, opts.template.as_deref())?))
        } else {
            None
        };
        Self::start_with(ctx, opts, kata)
    }

    /// Like [`E2eEnv::start`], with the shim and its configuration.toml
    /// given (`--from-release` takes both from the release tree); `None`
    /// runs without the kata runtime.
    pub fn start_with(
        ctx: &Ctx,
        opts: &EnvOptions,
        kata: Option<(PathBuf, String)>,
    ) -> Result<E2eEnv> {
        let logs = ctx.logs();
        std::fs::create_dir_all(&logs)?;
        let (shim, config_text) = match kata {
            Some((shim, text)) => (Some(shim), Some(text)),
            None => (None, None),
        };
        let busybox = image_busybox(ctx)?;
        let image_work = tempfile::Builder::new()
            .prefix("kata-e2e-image-")
            .tempdir()?;
        let mut image = write_oci_archive(
            &busybox,
            image_work.path(),
            ctx.epoch,
            IMAGE_BASE_NAME,
            &["/bin/sh"],
        )?;

        // One directory holds (and --keep keeps) everything of the run; the
        // Kata config must exist before containerd starts, as its path goes
        // into containerd's environment.
        let temp = PrivateContainerd::temp_dir()?;
        let mut env = Vec::new();
        let mut kata_config = None;
        if let Some(text) = &config_text {
            let p = temp.path().join("configuration.toml");
            std::fs::write(&p, text)?;
            std::fs::copy(
                &p,
                logs.join(format!("{}-configuration.toml", opts.log_name)),
            )?;
            env.push((KATA_CONF_ENV.to_string(), p.display().to_string()));
            env.push(("RUST_LOG".to_string(), "debug".to_string()));
            kata_config = Some(p);
        }
        let archive = temp.path().join("kata-e2e-image.oci.tar");
        std::fs::rename(&image.archive, &archive)
            .or_else(|_| std::fs::copy(&image.archive, &archive).map(drop))?;
        image.archive = archive;
        drop(image_work);
        let containerd = PrivateContainerd::start(
            temp,
            &logs.join(format!("{}-containerd.log", opts.log_name)),
            shim.as_deref(),
            &env,
            opts.keep,
            ContainerdSetup::default(),
        )?;
        std::fs::copy(
            &containerd.layout.config,
            logs.join(format!("{}-containerd.toml", opts.log_name)),
        )?;
        import_image(&containerd, &image)?;
        Ok(E2eEnv {
            containerd,
            image,
            shim,
            kata_config,
        })
    }

    pub fn ctr(&self) -> Ctr {
        self.containerd.ctr()
    }

    /// One `ctr run --rm IMAGE true` with `runtime`; the wall time of the
    /// whole command (create, start, exit, delete), for `bench start`.
    pub fn time_run_true(&self, runtime: &str, name: &str, flags: &[&str]) -> Result<Duration> {
        let id = self.containerd.new_id(name);
        let timeout = if runtime == KATA_RUNTIME {
            KATA_COMMAND_TIMEOUT
        } else {
            RUNC_COMMAND_TIMEOUT
        };
        let flags: Vec<&str> = std::iter::once("--rm")
            .chain(flags.iter().copied())
            .collect();
        let cmd = self
            .ctr()
            .run_command(runtime, &flags, &self.image.name, &id, &["true"]);
        let out = run_bounded(cmd, None, timeout)?;
        if !out.success() {
            self.containerd.force_remove(&id);
            bail!(
                "{}\ncontainerd log tail:\n{}",
                out.describe(),
                self.containerd.log_tail()
            );
        }
        Ok(out.took)
    }
}

/// Memory of one running sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxFootprint {
    pub container_id: String,
    /// (pid, program, PSS KiB) of the shim and each of its descendants.
    pub processes: Vec<(u32, String, u64)>,
    /// A VM started from a template runs on its own copy of the template's
    /// memory file (tmpfs): the part of it no process maps yet is memory
    /// the sandbox costs that no PSS shows, so it is counted here.
    pub memory_file_unmapped_kib: u64,
    /// The processes' PSS plus `memory_file_unmapped_kib`.
    pub total_pss_kib: u64,
}

/// The guest RAM file of QEMU `pid` started with
/// `memory-backend-file,id=mem` (a template clone), from its command line;
/// its own `/proc/self/fd/N` (the clone's memfd) as seen from here.
fn guest_memory_file(pid: u32, argv: &[String]) -> Option<PathBuf> {
    argv.iter()
        .find_map(|a| a.strip_prefix("memory-backend-file,id=mem,"))
        .and_then(|opts| opts.split(',').find_map(|o| o.strip_prefix("mem-path=")))
        .map(|p| match p.strip_prefix("/proc/self/") {
            Some(rest) => PathBuf::from(format!("/proc/{pid}/{rest}")),
            None => PathBuf::from(p),
        })
}

/// PSS of the shim serving `container_id` (found by its `-id` argument)
/// and of every process under it (QEMU, virtiofsd, vhost-device-vsock).
pub fn sandbox_footprint(container_id: &str) -> Result<SandboxFootprint> {
    let procs = all_procs();
    let shim = procs
        .iter()
        .filter(|p| !p.zombie && p.program().starts_with("containerd-shim"))
        .find(|p| {
            p.argv
                .windows(2)
                .any(|w| w[0] == "-id" && w[1] == container_id)
        })
        .with_context(|| format!("no containerd shim runs with -id {container_id}"))?;
    let mut processes = Vec::new();
    let mut memory_file_unmapped_kib = 0;
    for p in descendants(shim.pid, &procs)
        .into_iter()
        .filter(|p| !p.zombie)
    {
        processes.push((p.pid, p.program().to_string(), pss_kib(p.pid)?));
        if let Some(file) = guest_memory_file(p.pid, &p.argv) {
            use std::os::unix::fs::MetadataExt;
            let allocated_kib = std::fs::metadata(&file)
                .with_context(|| format!("stat {}", file.display()))?
                .blocks()
                / 2;
            // What QEMU maps of it is in its PSS already.
            let memfd = runtime::hypervisor::template::CLONE_MEMFD_NAME.to_string_lossy();
            let mapped_kib = mapping_rss_kib(p.pid, &format!("/memfd:{memfd}"))?;
            memory_file_unmapped_kib += allocated_kib.saturating_sub(mapped_kib);
        }
    }
    let total_pss_kib = processes.iter().map(|p| p.2).sum::<u64>() + memory_file_unmapped_kib;
    Ok(SandboxFootprint {
        container_id: container_id.into(),
        processes,
        memory_file_unmapped_kib,
        total_pss_kib,
    })
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

pub fn run(ctx: &Ctx, args: &E2eArgs) -> Result<()> {
    let kata = args.runtime == KATA_RUNTIME;
    if !kata && args.runtime != RUNC_RUNTIME {
        return Err(InputError::new(format!(
            "--runtime {}: only {KATA_RUNTIME} (the default) and {RUNC_RUNTIME} (harness check) are supported",
            args.runtime
        ))
        .into());
    }
    if !kata && args.shim.is_some() {
        return Err(InputError::new(format!(
            "--shim is for {KATA_RUNTIME}; drop it or --runtime"
        ))
        .into());
    }
    let media = if args.image {
        Media::Image
    } else {
        Media::Initrd
    };
    if ctx.dry_run {
        ctx.ui.info(&format!(
            "test e2e plan: {}; write the busybox OCI image; start a private containerd (config under a temp dir in /tmp, log {}); \
             import {IMAGE_BASE_NAME}:{IMAGE_TAG}; scenarios with --runtime {}{}",
            if kata { "build (or take from the cache) the release's shim, the kernel and guest, write configuration.toml" } else { "no shim (runc)" },
            ctx.rel(&ctx.logs().join("e2e-containerd.log")),
            args.runtime,
            if args.faults { " plus faults" } else { "" }
        ));
        return Ok(());
    }
    let opts = EnvOptions {
        kata,
        shim: args.shim.clone(),
        media,
        recipe: args.recipe.clone(),
        keep: args.keep,
        log_name: "e2e",
        template: args.template.then(template::template_dir),
    };
    if args.template && (!kata || args.from_release || args.shim.is_some()) {
        return Err(InputError::new(
            "--template runs the built shim and kata-runtime: drop --from-release, --shim and --runtime",
        )
        .into());
    }
    // The unpacked release (--from-release) must outlive the containerd using it.
    let mut release_tree = None;
    let env = if args.from_release {
        if !kata || args.shim.is_some() || args.image {
            return Err(InputError::new(
                "--from-release runs the released shim, kernel and configuration (image boot, as shipped): drop --shim, --image and --runtime",
            )
            .into());
        }
        let (tree, shim, config) = from_release(ctx, args.install_deb, &args.recipe)?;
        release_tree = Some(tree);
        E2eEnv::start_with(ctx, &opts, Some((shim, config)))?
    } else {
        E2eEnv::start(ctx, &opts)?
    };
    ctx.ui.info(&format!(
        "test e2e: containerd {} (pid {}), image {} {}, runtime {}{}",
        env.containerd.layout.address.display(),
        env.containerd.pid.get(),
        env.image.name,
        env.image.manifest_digest,
        args.runtime,
        env.shim
            .as_ref()
            .map(|s| format!(", shim {}", s.display()))
            .unwrap_or_default()
    ));
    // The template is made before any sandbox starts, with the run's own
    // configuration; the guard destroys it whatever happens.
    let factory = match (&opts.template, &env.kata_config) {
        (Some(dir), Some(config)) => Some(template::Factory::init(ctx, &env, dir, config)?),
        _ => None,
    };
    let mut r = Runner {
        ctx,
        env: &env,
        runtime: args.runtime.clone(),
        timeout: if kata {
            KATA_COMMAND_TIMEOUT
        } else {
            RUNC_COMMAND_TIMEOUT
        },
        results: Vec::new(),
        guest_kernel: None,
        only: args.scenario.clone(),
        offered: Vec::new(),
    };
    let mut skipped = Vec::new();
    r.scenario("a-kernel", &["uname"], scenario_kernel);
    r.scenario("b-exit-code", &["exit7"], scenario_exit_code);
    r.scenario("c-stdio", &["cat", "outerr"], scenario_stdio);
    r.scenario(
        "d-detached-exec-kill",
        &["detached"],
        scenario_detached_exec_kill,
    );
    r.scenario("g-one-char-id", &[], scenario_one_char_id);
    r.scenario("h-seccomp", &["sc1", "sc2"], scenario_seccomp);
    r.scenario("i-update", &["upd"], pod::scenario_update);
    r.scenario("j-oom", &["oom"], pod::scenario_oom);
    if kata {
        r.scenario("k-pod", &["pod", "podc"], pod::scenario_pod);
    } else {
        ctx.ui.info("SKIP k-pod: kata only (runc reads no CRI annotations: each container is its own sandbox)");
        skipped.push("k-pod");
    }
    r.scenario("l-pod-network", &["net"], network::scenario_pod_network);
    if kata {
        r.scenario("n-metrics", &["metrics"], operate::scenario_metrics);
        r.scenario(
            "o-kata-monitor",
            &["mon1", "mon2"],
            operate::scenario_kata_monitor,
        );
        r.scenario(
            "p-debug-console",
            &["console", "noconsole"],
            scenario_debug_console,
        );
        r.scenario(
            "q-direct-volume",
            &["dvol", "dvolm1", "dvolm2"],
            volumes::scenario_direct_volume,
        );
        r.scenario("r-iptables", &["ipt"], network::scenario_iptables);
        r.scenario(
            "s-verity",
            &["verity", "tampered"],
            volumes::scenario_verity,
        );
    } else {
        ctx.ui.info(
            "SKIP n-metrics, o-kata-monitor, p-debug-console, q-direct-volume, r-iptables, s-verity: kata only (runc has no shim monitor socket and no guest)",
        );
        skipped.extend([
            "n-metrics",
            "o-kata-monitor",
            "p-debug-console",
            "q-direct-volume",
            "r-iptables",
            "s-verity",
        ]);
    }
    if args.faults {
        if kata {
            r.scenario("f-qemu-killed", &["qemukill"], fault_qemu_killed);
            r.scenario("f-virtiofsd-killed", &["fskill"], fault_virtiofsd_killed);
            r.scenario(
                "f-vsock-daemon-killed",
                &["vsockkill"],
                fault_vsock_daemon_killed,
            );
            r.scenario("f-agent-silent", &["silent"], fault_agent_silent);
            r.scenario(
                "f-hostile-ids",
                &["hostile1", "hostile2", "hostile3", "hostile4"],
                fault_hostile_ids,
            );
            r.scenario("f-shim-killed", &["shimkill"], fault_shim_killed);
            r.scenario(
                "f-containerd-restarted",
                &["restart"],
                fault_containerd_restarted,
            );
        } else {
            ctx.ui.info("SKIP f-qemu-killed, f-virtiofsd-killed, f-vsock-daemon-killed, f-agent-silent, f-hostile-ids, f-shim-killed, f-containerd-restarted: kata only (runc runs no QEMU and reads no CRI annotations)");
            skipped.extend([
                "f-qemu-killed",
                "f-virtiofsd-killed",
                "f-vsock-daemon-killed",
                "f-containerd-restarted",
                "f-agent-silent",
                "f-hostile-ids",
                "f-shim-killed",
            ]);
        }
        r.scenario("f-invalid-spec", &["badcwd", "badexe"], fault_invalid_spec);
    }
    if args.from_release {
        r.scenario("m-probe-once", &[], scenario_probe_once);
    }
    if let Some(factory) = &factory {
        r.scenario("t-clones", &["clone1", "clone2"], |r, ids| {
            template::scenario_clones(r, ids, factory)
        });
        r.scenario(
            "t-every-sandbox-cloned",
            &[],
            template::scenario_every_sandbox_cloned,
        );
        r.scenario("t-no-template", &["cold"], |r, ids| {
            template::scenario_no_template(r, ids, factory)
        });
    }
    r.scenario("e-no-leftovers", &[], scenario_no_leftovers);
    let unknown: Vec<&String> = args
        .scenario
        .iter()
        .filter(|s| !r.offered.contains(s) && !skipped.contains(&s.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(InputError::new(format!(
            "--scenario {}: no such scenario in this run; use one of {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            r.offered.join(", ")
        ))
        .into());
    }

    let results = std::mem::take(&mut r.results);
    let guest_kernel = r.guest_kernel.take();
    let failed: Vec<&str> = results
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.name.as_str())
        .collect();
    let passed = results.len() - failed.len();
    let json_report = json!({
            "runtime": args.runtime,
            "shim": env.shim.as_ref().map(|p| p.display().to_string()),
            "kata_config": env.kata_config.as_ref().map(|_| ctx.rel(&ctx.logs().join("e2e-configuration.toml"))),
            "guest_kernel": guest_kernel,
            "host_kernel": host_kernel().ok(),
            "image": &env.image,
            "containerd_log": ctx.rel(&env.containerd.log),
            "scenarios": &results,
            "passed": passed,
            "failed": failed.len(),
            "skipped": skipped,
    });
    drop(factory);
    drop(env);
    // The installed package also serves pods through containerd's CRI, as
    // a distro's containerd would run it; then the package is purged.
    let mut cri_failed = Vec::new();
    let mut json_report = json_report;
    if let Some(ShippedTree::Installed(deb)) = release_tree.take() {
        let cri = crate::cri::run_installed(ctx);
        let purged = deb.purge(ctx);
        let cri = cri?;
        ctx.ui.info(&format!(
            "test e2e --install-deb: CRI {} passed, {} failed",
            cri.passed,
            cri.failed.len()
        ));
        cri_failed = cri.failed.clone();
        json_report["cri"] = serde_json::to_value(&cri)?;
        purged?;
    }
    if ctx.json {
        ctx.print_json(&json_report)?;
    }
    ctx.ui.info(&format!(
        "test e2e: {passed} passed, {} failed",
        failed.len()
    ));
    if !failed.is_empty() || !cri_failed.is_empty() {
        let mut all: Vec<String> = failed.iter().map(|s| s.to_string()).collect();
        all.extend(cri_failed.iter().map(|s| format!("cri {s}")));
        bail!("test e2e failed: {}", all.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::hypervisor::{BootMedia, ImageFs};

    #[test]
    fn a_clones_memory_file_is_found_on_its_command_line() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-object",
            "memory-backend-file,id=mem0,mem-path=/i/img,size=1,readonly=on,share=on",
            "-object",
            "memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/7,share=on",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            guest_memory_file(42, &argv),
            Some(PathBuf::from("/proc/42/fd/7"))
        );
        let cold: Vec<String> = vec![
            "-object".into(),
            "memory-backend-memfd,id=mem,size=512M,share=on".into(),
        ];
        assert_eq!(guest_memory_file(42, &cold), None);
    }

    #[test]
    fn harness_configuration_is_what_the_runtime_reads() {
        let text = harness_configuration(
            Path::new("/usr/bin/qemu-system-x86_64"),
            Path::new("/t/bzImage"),
            &BootMedia::Image {
                path: "/t/rootfs.erofs".into(),
                fs: ImageFs::Erofs,
                dax: true,
                verity: None,
            },
            Some("/root/.cargo/bin/vhost-device-vsock".into()),
            None,
        )
        .unwrap();
        assert!(
            text.starts_with("# Written by `cargo xtask test e2e`"),
            "{text}"
        );
        let c = runtime::config::parse(&text, Path::new("e2e.toml")).unwrap();
        let q = &c.hypervisor;
        assert_eq!(q.kernel, Path::new("/t/bzImage"));
        assert_eq!(q.image.as_deref(), Some(Path::new("/t/rootfs.erofs")));
        assert_eq!(q.initrd, None);
        assert_eq!(q.rootfs_type, "erofs");
        assert_eq!(q.default_memory, 512);
        assert_eq!(q.virtio_fs_daemon, Path::new(VIRTIOFSD));
        assert_eq!(q.accelerator, "tcg");
        assert!(q.enable_debug && c.agent.enable_debug && c.runtime.enable_debug);
        assert_eq!(
            q.vhost_user_vsock_daemon.as_deref(),
            Some(Path::new("/root/.cargo/bin/vhost-device-vsock"))
        );
        assert_eq!(c.agent.dial_timeout, 120);
        assert_eq!(c.request_timeout(), AGENT_REQUEST_TIMEOUT);
        assert_eq!(q.seccompsandbox, "", "as before: no -sandbox in the e2e VM");
        assert!(!c.factory.enable_template);

        let text = harness_configuration(
            Path::new("/q"),
            Path::new("/k"),
            &BootMedia::Initrd("/t/initrd.img".into()),
            None,
            Some(Path::new("/run/t/template")),
        )
        .unwrap();
        let c = runtime::config::parse(&text, Path::new("e2e.toml")).unwrap();
        assert_eq!(
            c.hypervisor.initrd.as_deref(),
            Some(Path::new("/t/initrd.img"))
        );
        assert_eq!(c.hypervisor.vhost_user_vsock_daemon, None);
        assert_eq!(c.runtime.internetworking_model, "tcfilter");
        assert!(c.factory.enable_template);
        assert_eq!(c.factory.template_path, Path::new("/run/t/template"));
    }
}
