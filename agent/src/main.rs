//! kata-agent: the guest agent of the VM sandbox.
//!
//! It serves the agent API (ttrpc, wire-compatible with upstream Kata's
//! `grpc.AgentService` and `grpc.Health`) to the runtime on the host, by
//! default on AF_VSOCK port 1024.
//!
//! # Init mode (PID 1)
//! When the kernel starts it as `/init` (initrd) or `init=` (image), the agent
//! is the guest's init: it mounts /proc, /sys, /dev (devtmpfs), /dev/pts,
//! /dev/shm, /run and the cgroup2 hierarchy, points stdio at /dev/console
//! (all logs go there), brings up `lo`, sets a boot hostname, reaps every
//! orphan, optionally runs a debug shell on the console (`agent.debug_console`),
//! and applies CreateSandbox to the guest (hostname, /etc/resolv.conf,
//! storage mounts). DestroySandbox ends the VM: after the reply is written it
//! stops all processes, syncs and powers off. A fatal error powers off too,
//! since PID 1 exiting would panic the kernel; so does a panic (a hook logs
//! its message and location first, see [`init::install_panic_hook`]).
//!
//! # Service mode (any other PID)
//! For development and tests on a host: no mounts, no power-off, the
//! machine's hostname and clock are left alone (hostname and DNS go to files
//! named by environment variables, or are only recorded), and DestroySandbox
//! makes the process exit with status 0.
//!
//! # Containers
//! The container methods (CreateContainer ... TtyWinResize) run containers
//! with youki's `libcontainer` (namespaces, cgroup v2, pivot_root,
//! capabilities, rlimits, user switching). Creating a container or an exec
//! goes through a short-lived, single-threaded helper: this same binary run
//! with `--libcontainer-helper` (see [`runtime_helper`]). Bundles, the shared
//! filesystem mount point and the rules for `Spec.Root.Path` are described
//! in [`container`].
//!
//! # Packet filter
//! GetIPTables and SetIPTables run the guest image's iptables-save and
//! iptables-restore (ip6tables-* for IPv6), bounded in time and output; an
//! image without them answers FAILED_PRECONDITION (see [`iptables`]).
//! SetIPTables is refused in service mode, like the network changes.
//!
//! # Configuration
//! Kernel parameters (from /proc/cmdline): `agent.log=<level>`,
//! `agent.server_addr=<vsock://CID:PORT | unix:///path>`, `agent.debug_console`
//! (a shell on the console, or with `agent.debug_console_vport=N` one per
//! connection on AF_VSOCK port N: see [`console`]).
//! Unknown `agent.*` keys are logged and ignored. Environment overrides:
//! `KATA_AGENT_CMDLINE` (file read instead of /proc/cmdline),
//! `KATA_AGENT_SERVER_ADDR`, `KATA_AGENT_LOG_LEVEL`, `KATA_AGENT_RESOLV_CONF`,
//! `KATA_AGENT_HOSTNAME_FILE`, `KATA_AGENT_SYSFS`, `KATA_AGENT_CONSOLE`,
//! `KATA_AGENT_RUN_DIR` (instead of /run/kata-containers; see [`config`]).

mod cgroup_limits;
mod cgroup_stats;
mod config;
mod console;
mod container;
mod guest;
mod init;
mod iptables;
mod kmod;
mod logger;
mod metrics;
mod network;
mod oci;
mod oom;
mod reaper;
mod rpc;
mod runtime_helper;
mod seccomp;
mod storage;
mod volume;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use config::Config;
use reaper::Reaper;

/// Time left for the DestroySandbox reply to be written before the server
/// goes away: ttrpc queues replies to a writer thread and offers no way to
/// wait for them, and a local write of a few bytes takes microseconds.
const REPLY_FLUSH_GRACE: Duration = Duration::from_millis(300);

/// How long init mode retries binding the vsock port (the transport driver
/// may still be probing when init starts).
const BIND_ATTEMPTS: u32 = 50;
const BIND_INTERVAL: Duration = Duration::from_millis(100);

fn main() {
    // the container helper (see runtime_helper) is this binary too
    runtime_helper::run_if_requested(&std::env::args().collect::<Vec<_>>());
    let init_mode = std::process::id() == 1;
    let mut early_problems = Vec::new();
    if init_mode {
        // First of all: from here on a panic powers the VM off instead of
        // killing PID 1 (a kernel panic).
        init::install_panic_hook();
        init::set_default_environment();
        early_problems = init::mount_early_filesystems();
        let console = config::console_path(&|key: &str| std::env::var(key).ok());
        if let Err(e) = init::attach_console(&console) {
            early_problems.push(format!(
                "cannot attach the console {}: {e}",
                console.display()
            ));
        }
    }
    logger::init(log::LevelFilter::Info);
    let config = Config::load(init_mode, &|key: &str| std::env::var(key).ok());
    logger::set_level(config.log_level);
    for problem in &early_problems {
        log::error!("{problem}");
    }
    for (level, note) in &config.notes {
        log::log!(*level, "{note}");
    }
    log::info!(
        "kata-agent {} starting in {} mode, serving on {}",
        rpc::AGENT_VERSION,
        if init_mode { "init" } else { "service" },
        config.server_addr
    );

    if let Err(e) = run(config) {
        log::error!("fatal: {e:#}");
        if init_mode {
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let reaper = Reaper::start().context("start the child reaper")?;
    if let Err(e) = init::become_subreaper() {
        log::warn!("cannot become child subreaper: {e}");
    }

    if config.init_mode {
        if let Err(e) = init::bring_interface_up("lo") {
            log::error!("cannot bring up lo: {e}");
        }
        if let Err(e) = init::set_boot_hostname() {
            log::error!("cannot set the boot hostname: {e}");
        }
    }
    if config.debug_console {
        if !config.owns_guest {
            log::warn!(
                "agent.debug_console is only honoured in a guest (init mode, or {}=1); ignored",
                config::ENV_GUEST_SERVICE
            );
        } else if config.debug_console_vport > 0 {
            console::start_vsock(reaper.clone(), config.debug_console_vport);
        } else {
            console::start(reaper.clone(), config.console.clone());
        }
    }

    let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel();
    let state = rpc::AgentState::new(config.clone(), shutdown_tx, reaper.clone());
    let socket_path = config
        .server_addr
        .strip_prefix("unix://")
        .filter(|p| !p.starts_with('@'))
        .map(std::path::PathBuf::from);
    if let Some(path) = &socket_path {
        remove_stale_socket(path)?;
    }
    let mut server = bind_with_retries(&config)?.register_service(rpc::methods(state));
    server
        .start()
        .map_err(|e| anyhow::anyhow!("start the ttrpc server on {}: {e}", config.server_addr))?;
    log::info!("agent API ready on {}", config.server_addr);

    let reason = shutdown_rx.recv().context("shutdown channel closed")?;
    log::info!("shutting down: {reason:?}");
    std::thread::sleep(REPLY_FLUSH_GRACE);
    if config.init_mode {
        init::power_off();
    }
    if let Some(path) = &socket_path {
        let _ = std::fs::remove_file(path);
    }
    // Service mode: leave without joining ttrpc's threads (a client still
    // connected would keep them alive).
    std::process::exit(0);
}

fn bind_with_retries(config: &Config) -> anyhow::Result<ttrpc::Server> {
    let attempts = if config.init_mode { BIND_ATTEMPTS } else { 1 };
    let mut last_error = None;
    for attempt in 0..attempts {
        match ttrpc::Server::new().bind(&config.server_addr) {
            Ok(server) => return Ok(server),
            Err(e) => last_error = Some(e),
        }
        if attempt + 1 < attempts {
            std::thread::sleep(BIND_INTERVAL);
        }
    }
    Err(anyhow::anyhow!(
        "cannot listen on {}: {}",
        config.server_addr,
        last_error.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// A socket file left by a previous run makes bind fail with EADDRINUSE.
fn remove_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display())),
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => Ok(()),
    }
}
