//! `cargo xtask test e2e [--faults] [--shim PATH] [--keep] [--json]`: runs
//! containers through a real, private containerd with the built
//! `containerd-shim-kata-v2`, using `ctr` as users do.
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
//! containerd's environment. Keys used (Kata's names):
//!   [hypervisor.qemu] path, kernel, initrd | image, machine_type,
//!                     kernel_params, default_vcpus, default_memory,
//!                     shared_fs = "virtio-fs", virtio_fs_daemon,
//!                     virtio_fs_cache, enable_debug, rootfs_type (image),
//!                     and this project's extensions accelerator = "tcg",
//!                     vhost_user_vsock_daemon
//!   [agent.kata]      enable_debug, dial_timeout
//!   [runtime]         enable_debug, internetworking_model,
//!                     sandbox_cgroup_only, static_sandbox_resource_mgmt
//!
//! `--from-release` runs the scenarios with only what a release ships: the
//! release is built (cached steps), its tarball unpacked under a temp dir,
//! and the shim, kernel, image, vsock daemon and configuration.toml taken
//! from there (see [`from_release`]); `--install-deb` installs the .deb into
//! the host's real /opt/kata instead (opt-in for that reason).
//!
//! For `cargo xtask bench` this module exposes [`E2eEnv::start`],
//! [`E2eEnv::time_run_true`] (one `ctr run --rm IMAGE true` with a given
//! runtime) and [`sandbox_footprint`] (PSS of a running sandbox's shim and
//! its QEMU, virtiofsd and vsock daemon).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::context::Ctx;
use crate::error::InputError;
use crate::hash::{bytes_sha256, file_sha256};
use crate::vmtest::{self, Media};

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
pub const KATA_CONF_ENV: &str = "KATA_CONF_FILE";
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// Where a containerd shim (Go's and the containerd-shim crate's) puts its
/// socket: `<root>/s/<sha256(address/namespace/id)>`, whatever containerd's
/// own state dir is.
const SHIM_SOCKET_ROOT: &str = "/run/containerd/s";
/// Per-sandbox state of the kata shim (design §5).
const KATA_STATE_ROOT: &str = "/run/kata-containers";
/// Process names whose survival after a scenario is a leak.
const WATCHED_PROGRAMS: &[&str] =
    &["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock", SHIM_BINARY, "containerd-shim-runc-v2"];
/// Applet links in the test image (all resolve to /bin/busybox).
const APPLETS: &[&str] = &[
    "cat", "echo", "env", "false", "id", "ls", "mkdir", "ps", "pwd", "rm", "sh", "sleep", "true", "uname",
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
    /// installs into the real /opt/kata of this host (so it is opt-in), and
    /// run with the installed configuration.
    #[arg(long, requires = "from_release")]
    pub install_deb: bool,
}

impl Default for E2eArgs {
    fn default() -> Self {
        E2eArgs { shim: None, keep: false, faults: false, image: false, recipe: "minimal".into(), runtime: KATA_RUNTIME.into(), from_release: false, install_deb: false }
    }
}

// ---------------------------------------------------------------------------
// Running commands with a bound
// ---------------------------------------------------------------------------

/// What one command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub command: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
    pub timed_out: bool,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    fn status_text(&self) -> String {
        match (self.timed_out, self.code, self.signal) {
            (true, ..) => format!("timed out after {:.1}s and was killed", self.took.as_secs_f64()),
            (_, Some(c), _) => format!("exit status {c}"),
            (_, None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown status".into(),
        }
    }

    /// Command, status and both streams: what a failure report needs.
    pub fn describe(&self) -> String {
        format!(
            "`{}`: {} after {} ms\n  stdout: {}\n  stderr: {}",
            self.command,
            self.status_text(),
            self.took.as_millis(),
            quote_block(&self.stdout),
            quote_block(&self.stderr)
        )
    }

    /// Fails unless the command exited 0.
    pub fn require_success(self) -> Result<Outcome> {
        if !self.success() {
            bail!("{}", self.describe());
        }
        Ok(self)
    }
}

fn quote_block(s: &str) -> String {
    let t = s.trim_end();
    if t.is_empty() {
        "(empty)".into()
    } else {
        format!("{t:?}")
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// A command started with captured output, to be waited on with a bound.
pub struct Running {
    command: String,
    child: Child,
    started: Instant,
    readers: Vec<JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn spawn(cmd: Command, stdin: Option<Vec<u8>>) -> Result<Running> {
        let piped = stdin.is_some();
        let (running, pipe) = Running::spawn_inner(cmd, piped)?;
        if let (Some(data), Some(mut pipe)) = (stdin, pipe) {
            // A thread, so that a child that never reads cannot block us;
            // dropping the pipe is the EOF the child waits for.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        Ok(running)
    }

    /// Like [`Running::spawn`], handing back the stdin pipe: the caller
    /// decides when EOF happens by dropping it.
    pub fn spawn_with_stdin(cmd: Command) -> Result<(Running, std::process::ChildStdin)> {
        let (running, pipe) = Running::spawn_inner(cmd, true)?;
        Ok((running, pipe.expect("piped")))
    }

    fn spawn_inner(mut cmd: Command, piped_stdin: bool) -> Result<(Running, Option<std::process::ChildStdin>)> {
        let command = describe_command(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() });
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot run `{command}`"))?;
        let stdin = child.stdin.take();
        let mut readers = Vec::new();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for mut pipe in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            }));
        }
        Ok((Running { command, child, started, readers }, stdin))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (without reaping it for good).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait(mut self, timeout: Duration) -> Result<Outcome> {
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if self.started.elapsed() > timeout {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = self.started.elapsed();
        // The streams end when every holder of the pipes is gone; a process
        // the child left behind may keep them open, so do not wait forever.
        let mut streams = Vec::new();
        for reader in self.readers.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            streams.push(if reader.is_finished() { reader.join().unwrap_or_default() } else { b"(stream still open)".to_vec() });
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(Outcome {
            command: self.command,
            code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(&streams[0]).into_owned(),
            stderr: String::from_utf8_lossy(&streams[1]).into_owned(),
            took,
            timed_out,
        })
    }
}

pub fn run_bounded(cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Result<Outcome> {
    Running::spawn(cmd, stdin)?.wait(timeout)
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
    pub zombie: bool,
    pub argv: Vec<String>,
}

impl ProcInfo {
    pub fn program(&self) -> &str {
        self.argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("")
    }

    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

pub fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold ')' or spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    Some(ProcInfo { pid, ppid, start_ticks, zombie: *state == "Z" || *state == "X", argv })
}

pub fn all_procs() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter_map(read_proc).collect()
}

fn environ_has(pid: u32, entry: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|&b| b == 0).any(|e| e == entry.as_bytes()),
        Err(_) => false,
    }
}

/// `pid` and all processes descending from it.
pub fn descendants(pid: u32, procs: &[ProcInfo]) -> Vec<ProcInfo> {
    let mut out: Vec<ProcInfo> = procs.iter().filter(|p| p.pid == pid).cloned().collect();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent && p.pid != pid) {
            frontier.push(p.pid);
            out.push(p.clone());
        }
    }
    out
}

/// Proportional set size in KiB from /proc/PID/smaps_rollup.
pub fn pss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Pss:") {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib.parse().with_context(|| format!("/proc/{pid}/smaps_rollup: bad Pss line {line:?}"));
        }
    }
    bail!("/proc/{pid}/smaps_rollup has no Pss line")
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).with_context(|| format!("kill -{sig} {pid}"))
}

/// Mount points (decoded) of the current mount namespace.
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|m| PathBuf::from(unescape_mountinfo(m))).collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() + 0 && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points().into_iter().filter(|m| m.starts_with(dir)).collect()
}

fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_socket() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn tail_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// The private containerd
// ---------------------------------------------------------------------------

/// Paths of one private containerd.
#[derive(Debug, Clone)]
pub struct ContainerdLayout {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub config: PathBuf,
    pub bin_dir: PathBuf,
    pub fifo_dir: PathBuf,
    pub opt_dir: PathBuf,
}

impl ContainerdLayout {
    fn new(dir: &Path) -> ContainerdLayout {
        ContainerdLayout {
            dir: dir.to_path_buf(),
            root: dir.join("root"),
            state: dir.join("state"),
            address: dir.join("containerd.sock"),
            config: dir.join("containerd.toml"),
            bin_dir: dir.join("bin"),
            fifo_dir: dir.join("fifo"),
            opt_dir: dir.join("opt"),
        }
    }
}

/// The containerd config: version 2, own paths, no CRI (no CNI noise),
/// overlayfs only. `ctr run --runtime io.containerd.kata.v2` names the
/// runtime directly: containerd maps it to the binary
/// `containerd-shim-kata-v2` on its PATH. The CRI runtime table is written
/// for CRI users of this file and is inert while CRI is disabled.
pub fn containerd_config(l: &ContainerdLayout) -> String {
    format!(
        r#"# Written by `cargo xtask test e2e`: a private containerd for the end-to-end tests.
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{address}"

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
    runtime_type = "{kata}"
"#,
        root = l.root.display(),
        state = l.state.display(),
        address = l.address.display(),
        opt = l.opt_dir.display(),
        kata = KATA_RUNTIME,
    )
}

/// A running private containerd; dropping it stops containerd and removes
/// every trace (see the module doc).
pub struct PrivateContainerd {
    pub layout: ContainerdLayout,
    pub log: PathBuf,
    child: Option<Child>,
    pub pid: u32,
    pub start_ticks: u64,
    /// `RUN_MARKER_ENV=<token>`, as found in /proc/PID/environ.
    pub marker: String,
    /// Container ids handed out, for targeted cleanup and checks.
    ids: std::cell::RefCell<BTreeSet<String>>,
    keep: bool,
    temp: Option<tempfile::TempDir>,
}

impl PrivateContainerd {
    /// `env` is added to containerd's environment (and so to every shim's);
    /// `shim_dir`, when given, goes first on its PATH.
    /// A fresh temp dir for [`PrivateContainerd::start`]. Short base: the
    /// grpc socket path must stay under the 107-byte sun_path limit, and so
    /// must containerd's derived ttrpc socket.
    pub fn temp_dir() -> Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix("kata-e2e-").tempdir_in("/tmp").context("create a temp dir in /tmp")
    }

    /// Starts containerd in `temp` (from [`PrivateContainerd::temp_dir`]).
    pub fn start(
        temp: tempfile::TempDir,
        log: &Path,
        shim: Option<&Path>,
        env: &[(String, String)],
        keep: bool,
    ) -> Result<PrivateContainerd> {
        for tool in ["containerd", "ctr"] {
            if crate::tools::which(tool).is_none() {
                bail!("{tool} is not installed: apt-get install containerd (or `cargo xtask doctor --install`)");
            }
        }
        let layout = ContainerdLayout::new(temp.path());
        if layout.address.as_os_str().len() + ".ttrpc".len() > 100 {
            bail!("socket path {} is too long for a unix socket", layout.address.display());
        }
        for d in [&layout.root, &layout.state, &layout.bin_dir, &layout.fifo_dir, &layout.opt_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        if let Some(shim) = shim {
            let link = layout.bin_dir.join(SHIM_BINARY);
            std::os::unix::fs::symlink(shim, &link).with_context(|| format!("link {}", link.display()))?;
        }
        std::fs::write(&layout.config, containerd_config(&layout))?;
        if let Some(d) = log.parent() {
            std::fs::create_dir_all(d)?;
        }
        let log_file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let token = format!("{}-{}", std::process::id(), temp.path().file_name().unwrap_or_default().to_string_lossy());
        let marker = format!("{RUN_MARKER_ENV}={token}");
        let mut path = OsString::from(&layout.bin_dir);
        if let Some(p) = std::env::var_os("PATH") {
            path.push(":");
            path.push(p);
        }
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&layout.config).env("PATH", path).env(RUN_MARKER_ENV, &token);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
        let child = cmd.spawn().context("cannot start containerd")?;
        let pid = child.id();
        let start_ticks = read_proc(pid).map(|p| p.start_ticks).unwrap_or(0);
        let mut cd = PrivateContainerd {
            layout,
            log: log.to_path_buf(),
            child: Some(child),
            pid,
            start_ticks,
            marker,
            ids: Default::default(),
            keep,
            temp: Some(temp),
        };
        cd.wait_ready()?;
        Ok(cd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("containerd exited at start ({status}); log {}:\n{}", self.log.display(), tail_lines(&self.log, LOG_TAIL_LINES));
            }
            if self.layout.address.exists() {
                let out = run_bounded(self.ctr().command(&["version"]), None, Duration::from_secs(10))?;
                if out.success() {
                    return Ok(());
                }
            }
            if t.elapsed() > CONTAINERD_READY_TIMEOUT {
                bail!(
                    "containerd did not answer on {} within {:?}; log {}:\n{}",
                    self.layout.address.display(),
                    CONTAINERD_READY_TIMEOUT,
                    self.log.display(),
                    tail_lines(&self.log, LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ctr(&self) -> Ctr {
        Ctr { address: self.layout.address.clone(), namespace: NAMESPACE.into(), fifo_dir: self.layout.fifo_dir.clone() }
    }

    /// A container id unique to this run, remembered for the checks.
    pub fn new_id(&self, name: &str) -> String {
        let id = format!("e2e-{}-{name}", std::process::id());
        self.ids.borrow_mut().insert(id.clone());
        id
    }

    pub fn ids(&self) -> Vec<String> {
        self.ids.borrow().iter().cloned().collect()
    }

    pub fn log_tail(&self) -> String {
        tail_lines(&self.log, LOG_TAIL_LINES)
    }

    /// Processes of this run other than containerd itself: marked through
    /// the environment, or a watched program started after containerd whose
    /// command line names one of our containers.
    pub fn our_processes(&self) -> Vec<ProcInfo> {
        let ids = self.ids();
        let me = std::process::id();
        all_procs()
            .into_iter()
            .filter(|p| p.pid != self.pid && p.pid != me && !p.zombie)
            .filter(|p| {
                environ_has(p.pid, &self.marker)
                    || (WATCHED_PROGRAMS.contains(&p.program())
                        && p.start_ticks >= self.start_ticks
                        && ids.iter().any(|id| p.cmdline().contains(id.as_str())))
            })
            .collect()
    }

    /// `/run/containerd/s/<sha256(address/namespace/id)>`: where a shim
    /// serving container `id` for this containerd puts its socket.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/{}/{}", self.layout.address.display(), NAMESPACE, id);
        Path::new(SHIM_SOCKET_ROOT).join(bytes_sha256(key.as_bytes()))
    }

    /// Everything of ours that should be gone once no container exists.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.our_processes() {
            out.push(format!("process {} ({}) still runs: {}", p.pid, p.program(), p.cmdline()));
        }
        for m in mounts_under(&self.layout.dir) {
            out.push(format!("mount {} is still there", m.display()));
        }
        for id in self.ids() {
            let kata_state = Path::new(KATA_STATE_ROOT).join(&id);
            for m in mounts_under(&kata_state) {
                out.push(format!("mount {} is still there", m.display()));
            }
            if kata_state.exists() {
                out.push(format!("kata state dir {} still exists", kata_state.display()));
            }
            // The shim's virtiofsd source dir, where container rootfs are mounted.
            let shared = Path::new(KATA_STATE_ROOT).join("shared/sandboxes").join(&id);
            for m in mounts_under(&shared) {
                out.push(format!("mount {} is still there", m.display()));
            }
            if shared.exists() {
                out.push(format!("kata shared dir {} still exists", shared.display()));
            }
            let sock = self.shim_socket(&id);
            if sock.exists() {
                out.push(format!("shim socket {} (container {id}) still exists", sock.display()));
            }
            let bundle = self.layout.state.join("io.containerd.runtime.v2.task").join(NAMESPACE).join(&id);
            if bundle.exists() {
                out.push(format!("bundle {} still exists", bundle.display()));
            }
        }
        for s in sockets_under(&self.layout.state) {
            out.push(format!("socket {} is left in containerd's state dir", s.display()));
        }
        let ctr = self.ctr();
        for (what, args) in [("task", ["tasks", "ls", "-q"]), ("container", ["containers", "ls", "-q"])] {
            match run_bounded(ctr.command(&args), None, Duration::from_secs(20)) {
                Ok(o) if o.success() => {
                    for id in o.stdout.lines().filter(|l| !l.trim().is_empty()) {
                        out.push(format!("containerd still lists {what} {id}"));
                    }
                }
                Ok(o) => out.push(format!("cannot list {what}s: {}", o.describe())),
                Err(e) => out.push(format!("cannot list {what}s: {e:#}")),
            }
        }
        out
    }

    /// Best effort: removes a container and its task, whatever state they
    /// are in, so that one failed scenario does not spoil the next.
    pub fn force_remove(&self, id: &str) {
        let ctr = self.ctr();
        let t = Duration::from_secs(60);
        let _ = run_bounded(ctr.command(&["tasks", "kill", "-a", "-s", "SIGKILL", id]), None, t);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match ctr.task_status(id) {
                Ok(Some(s)) if s != "STOPPED" => std::thread::sleep(Duration::from_millis(200)),
                _ => break,
            }
        }
        let _ = run_bounded(ctr.command(&["tasks", "delete", "-f", id]), None, t);
        let _ = run_bounded(ctr.command(&["containers", "delete", id]), None, t);
    }

    fn stop(&mut self) {
        for id in self.ids() {
            if matches!(self.ctr().task_status(&id), Ok(Some(_))) {
                self.force_remove(&id);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t.elapsed() < CONTAINERD_STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd by design; ours must not outlive the run.
        for _ in 0..3 {
            let procs = self.our_processes();
            if procs.is_empty() {
                break;
            }
            for p in &procs {
                let _ = signal(p.pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut mounts = mounts_under(&self.layout.dir);
        for id in self.ids() {
            mounts.extend(mounts_under(&Path::new(KATA_STATE_ROOT).join(&id)));
        }
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for id in self.ids() {
            let _ = std::fs::remove_file(self.shim_socket(&id));
            let _ = std::fs::remove_dir_all(Path::new(KATA_STATE_ROOT).join(&id));
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
        if let Some(temp) = self.temp.take() {
            if self.keep {
                let kept = temp.keep();
                eprintln!("test e2e: --keep: containerd dir kept at {}", kept.display());
            } else if let Err(e) = temp.close() {
                eprintln!("test e2e: warning: cannot remove {}: {e}", self.layout.dir.display());
            }
        }
    }
}

/// `ctr` bound to one containerd and namespace.
pub struct Ctr {
    pub address: PathBuf,
    pub namespace: String,
    pub fifo_dir: PathBuf,
}

impl Ctr {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.address).arg("--namespace").arg(&self.namespace).args(args);
        cmd
    }

    /// `ctr run` with our runtime, snapshotter and FIFO dir (ctr's default
    /// FIFO dir is /run/containerd/fifo: outside what we own).
    pub fn run_command(&self, runtime: &str, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Command {
        let mut cmd = self.command(&["run", "--runtime", runtime, "--snapshotter", "overlayfs"]);
        cmd.arg("--fifo-dir").arg(&self.fifo_dir).args(flags).arg(image).arg(id).args(args);
        cmd
    }

    pub fn exec_command(&self, id: &str, exec_id: &str, args: &[&str]) -> Command {
        let mut cmd = self.command(&["tasks", "exec", "--exec-id", exec_id]);
        cmd.arg("--fifo-dir").arg(&self.fifo_dir).arg(id).args(args);
        cmd
    }

    /// The STATUS column of `ctr tasks ls` for `id`, None when it has no task.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        let out = run_bounded(self.command(&["tasks", "ls"]), None, Duration::from_secs(30))?.require_success()?;
        Ok(out.stdout.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
        }))
    }

    pub fn wait_task_status(&self, id: &str, want: &str, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < timeout {
            last = self.task_status(id)?;
            if last.as_deref() == Some(want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("task {id} is {:?} after {:?}, not {want}", last.unwrap_or_else(|| "gone".into()), timeout)
    }
}

// ---------------------------------------------------------------------------
// The test image
// ---------------------------------------------------------------------------

/// Seam: the busybox put in the test image. For now the host's
/// busybox-static package; the pipeline's verified pin
/// (`ctx.fetcher()?.debian_member("busybox", &ctx.versions.busybox.debian)`)
/// is the intended source once the e2e run may take the cache lock.
pub fn image_busybox(_ctx: &Ctx) -> Result<PathBuf> {
    let p = PathBuf::from("/bin/busybox");
    if !p.is_file() {
        bail!("/bin/busybox is missing: apt-get install busybox-static (the e2e image is built from it)");
    }
    Ok(p)
}

#[derive(Debug, Clone, Serialize)]
pub struct OciImage {
    pub name: String,
    /// Inside the run's temp dir: gone after the run unless --keep.
    #[serde(skip)]
    pub archive: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub busybox_sha256: String,
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Writes an OCI image layout archive (oci-layout, index.json, blobs/sha256/
/// with config, manifest and one gzip layer) of busybox and its applet
/// links. Same busybox and epoch -> same bytes, same digests.
pub fn write_oci_archive(busybox: &Path, work: &Path, epoch: i64) -> Result<OciImage> {
    let layer_root = work.join("layer");
    let layout = work.join("layout");
    let _ = std::fs::remove_dir_all(&layer_root);
    let _ = std::fs::remove_dir_all(&layout);
    for d in ["bin", "etc", "dev", "proc", "sys", "tmp", "root"] {
        std::fs::create_dir_all(layer_root.join(d))?;
    }
    std::fs::set_permissions(layer_root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(layer_root.join("root"), std::fs::Permissions::from_mode(0o700))?;
    let bb = layer_root.join("bin/busybox");
    std::fs::copy(busybox, &bb).with_context(|| format!("copy {}", busybox.display()))?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", layer_root.join("bin").join(applet))?;
    }
    std::fs::write(layer_root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(layer_root.join("etc/group"), "root:x:0:\n")?;
    for f in ["etc/passwd", "etc/group"] {
        std::fs::set_permissions(layer_root.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    rootfs_builder::tree::pin_times(&layer_root, epoch)?;

    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer_tar = work.join("layer.tar");
    rootfs_builder::tar::write_tree_tar(&layer_root, std::io::BufWriter::new(std::fs::File::create(&layer_tar)?))?;
    let diff_id = file_sha256(&layer_tar)?;
    let layer_gz = work.join("layer.tar.gz");
    // gzip -n: no name, no timestamp in the header, so the digest depends on
    // the content only.
    let status = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::fs::File::open(&layer_tar)?)
        .stdout(std::fs::File::create(&layer_gz)?)
        .status()
        .context("cannot run gzip")?;
    if !status.success() {
        bail!("gzip -9 -n of {} failed ({status})", layer_tar.display());
    }
    let layer_digest = file_sha256(&layer_gz)?;
    let layer_size = std::fs::metadata(&layer_gz)?.len();
    std::fs::rename(&layer_gz, blobs.join(&layer_digest))?;
    std::fs::remove_file(&layer_tar)?;

    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = bytes_sha256(&config_bytes);
    std::fs::write(blobs.join(&config_digest), &config_bytes)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = bytes_sha256(&manifest_bytes);
    std::fs::write(blobs.join(&manifest_digest), &manifest_bytes)?;

    // The ref name is the tag only: `ctr images import --base-name` puts the
    // repository in front of it.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "platform": { "architecture": go_arch(), "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": IMAGE_TAG },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for f in walk_files(&layout)? {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
    }
    rootfs_builder::tree::pin_times(&layout, epoch)?;
    let archive = work.join("kata-e2e-image.oci.tar");
    let tmp = work.join(".kata-e2e-image.oci.tar.tmp");
    rootfs_builder::tar::write_tree_tar(&layout, std::io::BufWriter::new(std::fs::File::create(&tmp)?))?;
    std::fs::rename(&tmp, &archive)?;
    let _ = std::fs::remove_dir_all(&layer_root);
    let _ = std::fs::remove_dir_all(&layout);
    Ok(OciImage {
        name: format!("{IMAGE_BASE_NAME}:{IMAGE_TAG}"),
        archive,
        manifest_digest: format!("sha256:{manifest_digest}"),
        config_digest: format!("sha256:{config_digest}"),
        layer_digest: format!("sha256:{layer_digest}"),
        busybox_sha256: file_sha256(busybox)?,
    })
}

fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(walk_files(&e.path())?);
        } else {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Imports the archive and checks that containerd lists it under its name
/// with the manifest digest we wrote.
pub fn import_image(cd: &PrivateContainerd, image: &OciImage) -> Result<()> {
    let ctr = cd.ctr();
    let mut cmd = ctr.command(&["images", "import", "--base-name", IMAGE_BASE_NAME, "--snapshotter", "overlayfs"]);
    cmd.arg(&image.archive);
    run_bounded(cmd, None, Duration::from_secs(120))?
        .require_success()
        .with_context(|| format!("import the test image; containerd log:\n{}", cd.log_tail()))?;
    let list = run_bounded(ctr.command(&["images", "ls"]), None, Duration::from_secs(30))?.require_success()?;
    let line = list.stdout.lines().find(|l| l.split_whitespace().next() == Some(image.name.as_str()));
    match line {
        Some(l) if l.contains(&image.manifest_digest) => Ok(()),
        Some(l) => bail!("containerd lists {} with another digest than {}: {l}", image.name, image.manifest_digest),
        None => bail!("after import containerd does not list {}:\n{}", image.name, list.stdout),
    }
}

// ---------------------------------------------------------------------------
// Shim, guest and the Kata configuration
// ---------------------------------------------------------------------------

fn target_dir(ctx: &Ctx) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => ctx.root.join(d),
        _ => ctx.root.join("target"),
    }
}

/// The shim binary: `--shim PATH`, else built with cargo (release).
pub fn shim_binary(ctx: &Ctx, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(InputError::new(format!("--shim {}: no such file; pass the built {SHIM_BINARY}", p.display())).into());
        }
        return Ok(std::fs::canonicalize(p)?);
    }
    let cmd_text = format!("cargo build --release -p kata-runtime --bin {SHIM_BINARY}");
    let step = ctx.ui.step(&format!("test e2e: {cmd_text}"));
    let out = Command::new("cargo")
        .args(["build", "--release", "-p", "kata-runtime", "--bin", SHIM_BINARY])
        .current_dir(&ctx.root)
        .stdin(Stdio::null())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        step.finish("failed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
        bail!("{SHIM_BINARY} is not built: `{cmd_text}` failed ({}): {tail}", out.status);
    }
    step.finish("done");
    let bin = target_dir(ctx).join("release").join(SHIM_BINARY);
    if !bin.is_file() {
        bail!("{SHIM_BINARY} is not built: cargo succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// `configuration.toml` for the shim (Kata's section and key names; see the
/// module doc for the list this harness relies on).
pub fn kata_configuration(guest: &vmtest::Guest) -> Result<String> {
    let qemu = crate::tools::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")?;
    if !Path::new(VIRTIOFSD).is_file() {
        bail!("{VIRTIOFSD} is missing: apt-get install qemu-system-common (virtiofsd shares the container rootfs)");
    }
    let boot = match &guest.boot {
        runtime::hypervisor::BootMedia::Initrd(p) => format!("initrd = \"{}\"", p.display()),
        runtime::hypervisor::BootMedia::Image { path, fs, .. } => {
            let fs = match fs {
                runtime::hypervisor::ImageFs::Ext4 => "ext4",
                runtime::hypervisor::ImageFs::Erofs => "erofs",
            };
            format!("image = \"{}\"\nrootfs_type = \"{fs}\"", path.display())
        }
    };
    // Our extension key; without /dev/vhost-vsock the shim needs it, and
    // containerd's PATH need not hold ~/.cargo/bin where doctor installs it.
    let vsock_daemon = match crate::tools::which("vhost-device-vsock")
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/vhost-device-vsock")).filter(|p| p.is_file()))
    {
        Some(p) => format!("vhost_user_vsock_daemon = \"{}\"\n", p.display()),
        None => String::new(),
    };
    Ok(format!(
        r#"# Written by `cargo xtask test e2e` for its private containerd.
[hypervisor.qemu]
path = "{qemu}"
kernel = "{kernel}"
{boot}
machine_type = "q35"
kernel_params = ""
default_vcpus = 1
default_memory = 512
shared_fs = "virtio-fs"
virtio_fs_daemon = "{virtiofsd}"
virtio_fs_cache = "auto"
enable_debug = true
# Our extensions (runtime/src/config.rs): KVM guests crash on the CI hosts,
# so no probe: TCG.
accelerator = "tcg"
{vsock_daemon}
[agent.kata]
enable_debug = true
# Seconds; a TCG boot on a loaded CI machine is slow.
dial_timeout = 120
# Our extension: the bound of each agent call (f-agent-silent relies on it).
request_timeout = {request_timeout}

[runtime]
enable_debug = true
internetworking_model = "none"
sandbox_cgroup_only = false
static_sandbox_resource_mgmt = true
"#,
        qemu = qemu.display(),
        kernel = guest.kernel.display(),
        virtiofsd = VIRTIOFSD,
        request_timeout = AGENT_REQUEST_TIMEOUT.as_secs(),
        vsock_daemon = vsock_daemon,
    ))
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
            Some((shim, kata_configuration(&guest)?))
        } else {
            None
        };
        Self::start_with(ctx, opts, kata)
    }

    /// Like [`E2eEnv::start`], with the shim and its configuration.toml
    /// given (`--from-release` takes both from the release tree); `None`
    /// runs without the kata runtime.
    pub fn start_with(ctx: &Ctx, opts: &EnvOptions, kata: Option<(PathBuf, String)>) -> Result<E2eEnv> {
        let logs = ctx.logs();
        std::fs::create_dir_all(&logs)?;
        let (shim, config_text) = match kata {
            Some((shim, text)) => (Some(shim), Some(text)),
            None => (None, None),
        };
        let busybox = image_busybox(ctx)?;
        let image_work = tempfile::Builder::new().prefix("kata-e2e-image-").tempdir()?;
        let mut image = write_oci_archive(&busybox, image_work.path(), ctx.epoch)?;

        // One directory holds (and --keep keeps) everything of the run; the
        // Kata config must exist before containerd starts, as its path goes
        // into containerd's environment.
        let temp = PrivateContainerd::temp_dir()?;
        let mut env = Vec::new();
        let mut kata_config = None;
        if let Some(text) = &config_text {
            let p = temp.path().join("configuration.toml");
            std::fs::write(&p, text)?;
            std::fs::copy(&p, logs.join("e2e-configuration.toml"))?;
            env.push((KATA_CONF_ENV.to_string(), p.display().to_string()));
            env.push(("RUST_LOG".to_string(), "debug".to_string()));
            kata_config = Some(p);
        }
        let archive = temp.path().join("kata-e2e-image.oci.tar");
        std::fs::rename(&image.archive, &archive).or_else(|_| std::fs::copy(&image.archive, &archive).map(drop))?;
        image.archive = archive;
        drop(image_work);
        let containerd = PrivateContainerd::start(temp, &logs.join("e2e-containerd.log"), shim.as_deref(), &env, opts.keep)?;
        std::fs::copy(&containerd.layout.config, logs.join("e2e-containerd.toml"))?;
        import_image(&containerd, &image)?;
        Ok(E2eEnv { containerd, image, shim, kata_config })
    }

    pub fn ctr(&self) -> Ctr {
        self.containerd.ctr()
    }

    /// One `ctr run --rm IMAGE true` with `runtime`; the wall time of the
    /// whole command (create, start, exit, delete), for `bench start`.
    pub fn time_run_true(&self, runtime: &str, name: &str) -> Result<Duration> {
        let id = self.containerd.new_id(name);
        let timeout = if runtime == KATA_RUNTIME { KATA_COMMAND_TIMEOUT } else { RUNC_COMMAND_TIMEOUT };
        let cmd = self.ctr().run_command(runtime, &["--rm"], &self.image.name, &id, &["true"]);
        let out = run_bounded(cmd, None, timeout)?;
        if !out.success() {
            self.containerd.force_remove(&id);
            bail!("{}\ncontainerd log tail:\n{}", out.describe(), self.containerd.log_tail());
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
    pub total_pss_kib: u64,
}

/// PSS of the shim serving `container_id` (found by its `-id` argument)
/// and of every process under it (QEMU, virtiofsd, vhost-device-vsock).
pub fn sandbox_footprint(container_id: &str) -> Result<SandboxFootprint> {
    let procs = all_procs();
    let shim = procs
        .iter()
        .filter(|p| !p.zombie && p.program().starts_with("containerd-shim"))
        .find(|p| p.argv.windows(2).any(|w| w[0] == "-id" && w[1] == container_id))
        .with_context(|| format!("no containerd shim runs with -id {container_id}"))?;
    let mut processes = Vec::new();
    for p in descendants(shim.pid, &procs).into_iter().filter(|p| !p.zombie) {
        processes.push((p.pid, p.program().to_string(), pss_kib(p.pid)?));
    }
    let total_pss_kib = processes.iter().map(|p| p.2).sum();
    Ok(SandboxFootprint { container_id: container_id.into(), processes, total_pss_kib })
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub passed: bool,
    pub ms: u64,
    pub detail: String,
}

struct Runner<'a> {
    ctx: &'a Ctx,
    env: &'a E2eEnv,
    runtime: String,
    timeout: Duration,
    results: Vec<ScenarioResult>,
    guest_kernel: Option<String>,
}

impl Runner<'_> {
    fn kata(&self) -> bool {
        self.runtime == KATA_RUNTIME
    }

    fn ctr(&self) -> Ctr {
        self.env.ctr()
    }

    fn run(&self, id: &str, flags: &[&str], args: &[&str], stdin: Option<&[u8]>) -> Result<Outcome> {
        let cmd = self.ctr().run_command(&self.runtime, flags, &self.env.image.name, id, args);
        run_bounded(cmd, stdin.map(|s| s.to_vec()), self.timeout)
    }

    /// Runs one scenario; a failure carries the containerd (and so shim)
    /// log tail, and the containers it created are removed afterwards.
    fn scenario(&mut self, name: &str, ids: &[&str], f: impl FnOnce(&mut Self, &[String]) -> Result<String>) {
        let ids: Vec<String> = ids.iter().map(|n| self.env.containerd.new_id(n)).collect();
        let t = Instant::now();
        let r = f(self, &ids);
        let ms = t.elapsed().as_millis() as u64;
        let (passed, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => {
                for id in &ids {
                    self.env.containerd.force_remove(id);
                }
                (false, format!("{e:#}\n--- containerd log tail ({}):\n{}", self.env.containerd.log.display(), self.env.containerd.log_tail()))
            }
        };
        if passed {
            self.ctx.ui.info(&format!("PASS {name} ({ms} ms): {detail}"));
        } else {
            self.ctx.ui.info(&format!("FAIL {name} ({ms} ms): {detail}"));
        }
        self.results.push(ScenarioResult { name: name.into(), passed, ms, detail });
    }
}

fn host_kernel() -> Result<String> {
    Ok(nix::sys::utsname::uname()?.release().to_string_lossy().into_owned())
}

fn expect_code(out: &Outcome, code: i32) -> Result<()> {
    if out.timed_out || out.code != Some(code) {
        bail!("expected exit status {code}: {}", out.describe());
    }
    Ok(())
}

fn leftovers_now(cd: &PrivateContainerd) -> Result<()> {
    let left = cd.leftovers();
    if !left.is_empty() {
        bail!("left behind:\n  {}", left.join("\n  "));
    }
    Ok(())
}

fn scenario_kernel(r: &mut Runner, ids: &[String]) -> Result<String> {
    let out = r.run(&ids[0], &["--rm"], &["uname", "-r"], None)?.require_success()?;
    let seen = out.stdout.trim().to_string();
    let host = host_kernel()?;
    if r.kata() {
        let want = &r.ctx.versions.kernel.version;
        if !seen.starts_with(want.as_str()) {
            bail!("the container sees kernel {seen:?}, not the pipeline's {want} (host runs {host})");
        }
        if seen == host {
            bail!("the container sees the host's kernel {host}: it did not run in a VM");
        }
        r.guest_kernel = Some(seen.clone());
        Ok(format!("guest kernel {seen} (pipeline {want}, host {host}) in {} ms", out.took.as_millis()))
    } else {
        // runc shares the host kernel: this proves the harness, not a VM.
        if seen != host {
            bail!("runc container sees kernel {seen:?} but the host runs {host}");
        }
        Ok(format!("runc container sees the host kernel {seen} (kata asserts the guest kernel here)"))
    }
}

fn scenario_exit_code(r: &mut Runner, ids: &[String]) -> Result<String> {
    let out = r.run(&ids[0], &["--rm"], &["sh", "-c", "exit 7"], None)?;
    expect_code(&out, 7)?;
    Ok("`sh -c 'exit 7'` -> ctr exit status 7".into())
}

/// `ctr run` forwards its stdin's EOF to the task (CloseIO) only once the
/// task exists; an EOF read before that is lost (ctr 1.6), and `cat` would
/// wait forever. So the data goes in at once and EOF once the task runs,
/// which is also what a person typing into `ctr run` does.
fn run_with_stdin(r: &Runner, id: &str, args: &[&str], data: &[u8]) -> Result<Outcome> {
    let cmd = r.ctr().run_command(&r.runtime, &["--rm"], &r.env.image.name, id, args);
    let (mut running, mut pipe) = Running::spawn_with_stdin(cmd)?;
    pipe.write_all(data).context("write to ctr's stdin")?;
    let ctr = r.ctr();
    let t = Instant::now();
    while running.is_running() && t.elapsed() < r.timeout {
        if ctr.task_status(id)?.as_deref() == Some("RUNNING") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pipe);
    running.wait(r.timeout.saturating_sub(t.elapsed()))
}

fn scenario_stdio(r: &mut Runner, ids: &[String]) -> Result<String> {
    let out = run_with_stdin(r, &ids[0], &["cat"], b"hello from stdin\n")?.require_success()?;
    if out.stdout != "hello from stdin\n" {
        bail!("`cat` echoed {:?}, expected \"hello from stdin\\n\": {}", out.stdout, out.describe());
    }
    let out = r.run(&ids[1], &["--rm"], &["sh", "-c", "echo out; echo err >&2"], None)?.require_success()?;
    if out.stdout != "out\n" || out.stderr != "err\n" {
        bail!("expected stdout \"out\\n\" and stderr \"err\\n\": {}", out.describe());
    }
    Ok("stdin reached cat and came back; stdout and stderr stayed apart".into())
}

fn scenario_detached_exec_kill(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(id, &["-d"], &["sleep", "300"], None)?.require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(30))?;
    let sock_seen = r.env.containerd.shim_socket(id).exists();
    // The leftover scan must see a live sandbox, or its "nothing left" means nothing.
    let live = r.env.containerd.our_processes();
    if !live.iter().any(|p| p.program().starts_with("containerd-shim")) {
        bail!("the process scan finds no shim of ours while {id} runs (found: {:?})", live.iter().map(|p| p.program()).collect::<Vec<_>>());
    }
    if r.kata() && !live.iter().any(|p| p.program() == "qemu-system-x86_64") {
        bail!("the process scan finds no QEMU of ours while {id} runs");
    }
    let footprint = sandbox_footprint(id)?;
    if footprint.total_pss_kib == 0 || (r.kata() && !footprint.processes.iter().any(|p| p.1 == "qemu-system-x86_64")) {
        bail!("implausible footprint of {id}: {footprint:?}");
    }
    let while_running = r.env.containerd.leftovers();
    if !while_running.iter().any(|l| l.starts_with("mount ")) || !while_running.iter().any(|l| l.contains(id)) {
        bail!("the leftover check does not see the running {id} (its rootfs mount and task): {while_running:?}");
    }
    let out = run_bounded(ctr.exec_command(id, "e1", &["sh", "-c", "echo exec-ok"]), None, r.timeout)?.require_success()?;
    if out.stdout.trim() != "exec-ok" {
        bail!("exec printed {:?}, expected exec-ok: {}", out.stdout, out.describe());
    }
    run_bounded(ctr.command(&["tasks", "kill", "-s", "SIGKILL", id]), None, r.timeout)?.require_success()?;
    ctr.wait_task_status(id, "STOPPED", Duration::from_secs(60))?;
    // ctr 1.6 reports the status of the deleted task as a warning
    // ("exit with non-zero exit code 137" = 128 + SIGKILL) and exits 0.
    let del = run_bounded(ctr.command(&["tasks", "delete", id]), None, r.timeout)?.require_success()?;
    if !del.stderr.contains("exit code 137") {
        bail!("ctr tasks delete of a SIGKILLed task does not report exit code 137: {}", del.describe());
    }
    run_bounded(ctr.command(&["containers", "delete", id]), None, r.timeout)?.require_success()?;
    leftovers_now(&r.env.containerd)?;
    let procs: Vec<String> = footprint.processes.iter().map(|(pid, name, kib)| format!("{name}[{pid}] {kib}")).collect();
    Ok(format!(
        "run -d, exec e1 printed exec-ok, SIGKILL -> STOPPED, delete reported 137, container deleted, nothing left; \
         sandbox PSS {} KiB ({}){}",
        footprint.total_pss_kib,
        procs.join(", "),
        if sock_seen { "" } else { " (note: no shim socket seen at the expected /run/containerd/s path)" }
    ))
}

fn scenario_no_leftovers(r: &mut Runner, _ids: &[String]) -> Result<String> {
    leftovers_now(&r.env.containerd)?;
    Ok(format!(
        "no shim/QEMU/virtiofsd/vsock process, mount, socket, bundle or kata state of {} containers left",
        r.env.containerd.ids().len()
    ))
}

/// QEMU of a running sandbox is killed: `ctr run` must end with an error
/// within its bound, and the shim must clean up everything.
fn fault_qemu_killed(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let cmd = r.ctr().run_command(&r.runtime, &["--rm"], &r.env.image.name, id, &["sleep", "300"]);
    let mut running = Running::spawn(cmd, None)?;
    let ctr = r.ctr();
    let t = Instant::now();
    loop {
        if !running.is_running() {
            let out = running.wait(Duration::from_secs(1))?;
            bail!("ctr run ended before the container ran: {}", out.describe());
        }
        if ctr.task_status(id)?.as_deref() == Some("RUNNING") {
            break;
        }
        if t.elapsed() > r.timeout {
            let out = running.wait(Duration::ZERO)?;
            bail!("the container never reached RUNNING: {}", out.describe());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let qemus: Vec<ProcInfo> =
        r.env.containerd.our_processes().into_iter().filter(|p| p.program() == "qemu-system-x86_64").collect();
    if qemus.len() != 1 {
        let _ = signal(running.pid(), nix::sys::signal::Signal::SIGKILL);
        bail!("expected one QEMU of ours for {id}, found {}", qemus.len());
    }
    signal(qemus[0].pid, nix::sys::signal::Signal::SIGKILL)?;
    let killed = Instant::now();
    let out = running.wait(Duration::from_secs(120))?;
    if out.timed_out {
        bail!("ctr run did not end within 120 s of QEMU being killed: {}", out.describe());
    }
    if out.success() {
        bail!("ctr run reported success although QEMU was killed: {}", out.describe());
    }
    let detected = killed.elapsed();
    // The shim tears down after reporting the exit; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = r.env.containerd.leftovers();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("after QEMU was killed, left behind:\n  {}", left.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(format!("ctr run ended ({}) {} ms after QEMU {} was killed; nothing left", out.status_text(), detected.as_millis(), qemus[0].pid))
}

/// The bound of one agent call in the test's configuration.
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The guest stops answering (its QEMU is frozen with SIGSTOP): the next
/// call through the shim must fail with a clear error within the agent
/// request bound, and after the sandbox is killed nothing may be left.
fn fault_agent_silent(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(id, &["-d"], &["sleep", "300"], None)?.require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
    let qemus: Vec<ProcInfo> =
        r.env.containerd.our_processes().into_iter().filter(|p| p.program() == "qemu-system-x86_64").collect();
    if qemus.len() != 1 {
        bail!("expected one QEMU of ours for {id}, found {}", qemus.len());
    }
    let qemu = qemus[0].pid;
    signal(qemu, nix::sys::signal::Signal::SIGSTOP)?;
    let t = Instant::now();
    let bound = AGENT_REQUEST_TIMEOUT + Duration::from_secs(30);
    let out = run_bounded(ctr.exec_command(id, "silent", &["true"]), None, bound + Duration::from_secs(30));
    let waited = t.elapsed();
    // Whatever happened, end the frozen sandbox the hard way.
    let _ = signal(qemu, nix::sys::signal::Signal::SIGKILL);
    let _ = signal(qemu, nix::sys::signal::Signal::SIGCONT);
    let out = out?;
    if out.success() {
        bail!("exec succeeded although the guest was frozen: {}", out.describe());
    }
    if out.timed_out || waited > bound {
        bail!("the error took {waited:?}, beyond the agent request bound {AGENT_REQUEST_TIMEOUT:?} (+30 s): {}", out.describe());
    }
    let _ = run_bounded(ctr.command(&["tasks", "delete", "-f", id]), None, r.timeout);
    let _ = run_bounded(ctr.command(&["containers", "delete", id]), None, r.timeout);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = r.env.containerd.leftovers();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("after the silent agent, left behind:\n  {}", left.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let first = out.stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
    Ok(format!("exec failed after {} ms with: {first}; nothing left", waited.as_millis()))
}

/// Specs the runtime cannot honour must come back to ctr as an error and
/// leave nothing behind.
fn fault_invalid_spec(r: &mut Runner, ids: &[String]) -> Result<String> {
    let mut seen = Vec::new();
    let cases: [(&str, &[&str], &[&str]); 2] = [
        ("a cwd under a regular file", &["--rm", "--cwd", "/bin/busybox/nowhere"], &["true"]),
        ("a missing executable", &["--rm"], &["/does/not/exist"]),
    ];
    for ((what, flags, args), id) in cases.iter().zip(ids) {
        let out = r.run(id, flags, args, None)?;
        if out.success() || out.timed_out {
            bail!("{what}: expected ctr to fail: {}", out.describe());
        }
        if out.stderr.trim().is_empty() {
            bail!("{what}: ctr failed without saying why: {}", out.describe());
        }
        leftovers_now(&r.env.containerd).with_context(|| format!("after {what}"))?;
        let first = out.stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        seen.push(format!("{what}: {} ({first})", out.status_text()));
    }
    Ok(seen.join("; "))
}

// ---------------------------------------------------------------------------
// --from-release: the shipped tree, nothing else
// ---------------------------------------------------------------------------

/// Builds (or takes from the cache) the release and returns (the temp dir
/// holding the unpacked tree, the shipped shim, the shipped configuration
/// re-rooted at the unpacked prefix).
///
/// The shipped configuration.toml names `/opt/kata/...` paths. Rather than
/// install into the host's real /opt/kata, the tarball is unpacked under a
/// temp dir and the configuration's `/opt/kata` prefix string is replaced by
/// `<tmp>/opt/kata`: every other line (accelerator = "auto", memory,
/// timeouts) stays as shipped. With `install_deb` the .deb is installed with
/// dpkg into the real /opt/kata and its configuration is used unchanged.
fn from_release(ctx: &Ctx, install_deb: bool) -> Result<(Option<tempfile::TempDir>, PathBuf, String)> {
    let built = crate::release::build(ctx, &crate::release::ReleaseArgs::default())?;
    let prefix = Path::new(crate::release::PREFIX);
    let config_rel = "share/defaults/kata-containers/configuration.toml";
    if install_deb {
        let step = ctx.ui.step(&format!("test e2e: dpkg -i {}", built.deb.display()));
        crate::tools::run_captured(Command::new("dpkg").arg("-i").arg(&built.deb))?;
        step.finish("installed into /opt/kata");
        let config = std::fs::read_to_string(prefix.join(config_rel))?;
        return Ok((None, prefix.join("bin").join(SHIM_BINARY), config));
    }
    let tree = tempfile::Builder::new().prefix("kata-e2e-release-").tempdir()?;
    crate::tools::run_captured(Command::new("tar").arg("--zstd").arg("-xf").arg(&built.tarball).arg("-C").arg(tree.path()))
        .context("unpack the release tarball (needs GNU tar and zstd)")?;
    let root = tree.path().join(prefix.strip_prefix("/").expect("absolute prefix"));
    let shipped = std::fs::read_to_string(root.join(config_rel))
        .with_context(|| format!("the release tarball has no {config_rel}"))?;
    let config = shipped.replace(crate::release::PREFIX, &root.display().to_string());
    let shim = root.join("bin").join(SHIM_BINARY);
    if !shim.is_file() {
        bail!("the release tarball has no bin/{SHIM_BINARY}");
    }
    ctx.ui.info(&format!("test e2e: from release {} unpacked at {}", built.tarball.display(), root.display()));
    Ok((Some(tree), shim, config))
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
        return Err(InputError::new(format!("--shim is for {KATA_RUNTIME}; drop it or --runtime")).into());
    }
    let media = if args.image { Media::Image } else { Media::Initrd };
    if ctx.dry_run {
        ctx.ui.info(&format!(
            "test e2e plan: {}; write the busybox OCI image; start a private containerd (config under a temp dir in /tmp, log {}); \
             import {IMAGE_BASE_NAME}:{IMAGE_TAG}; scenarios with --runtime {}{}",
            if kata { "build the shim, kernel and guest, write configuration.toml" } else { "no shim (runc)" },
            ctx.rel(&ctx.logs().join("e2e-containerd.log")),
            args.runtime,
            if args.faults { " plus faults" } else { "" }
        ));
        return Ok(());
    }
    let opts = EnvOptions { kata, shim: args.shim.clone(), media, recipe: args.recipe.clone(), keep: args.keep };
    // The unpacked release (--from-release) must outlive the containerd using it.
    let mut _release_tree = None;
    let env = if args.from_release {
        if !kata || args.shim.is_some() || args.image {
            return Err(InputError::new(
                "--from-release runs the released shim, kernel and configuration (image boot, as shipped): drop --shim, --image and --runtime",
            )
            .into());
        }
        let (tree, shim, config) = from_release(ctx, args.install_deb)?;
        _release_tree = tree;
        E2eEnv::start_with(ctx, &opts, Some((shim, config)))?
    } else {
        E2eEnv::start(ctx, &opts)?
    };
    ctx.ui.info(&format!(
        "test e2e: containerd {} (pid {}), image {} {}, runtime {}{}",
        env.containerd.layout.address.display(),
        env.containerd.pid,
        env.image.name,
        env.image.manifest_digest,
        args.runtime,
        env.shim.as_ref().map(|s| format!(", shim {}", s.display())).unwrap_or_default()
    ));
    let mut r = Runner {
        ctx,
        env: &env,
        runtime: args.runtime.clone(),
        timeout: if kata { KATA_COMMAND_TIMEOUT } else { RUNC_COMMAND_TIMEOUT },
        results: Vec::new(),
        guest_kernel: None,
    };
    let mut skipped = Vec::new();
    r.scenario("a-kernel", &["uname"], scenario_kernel);
    r.scenario("b-exit-code", &["exit7"], scenario_exit_code);
    r.scenario("c-stdio", &["cat", "outerr"], scenario_stdio);
    r.scenario("d-detached-exec-kill", &["detached"], scenario_detached_exec_kill);
    if args.faults {
        if kata {
            r.scenario("f-qemu-killed", &["qemukill"], fault_qemu_killed);
            r.scenario("f-agent-silent", &["silent"], fault_agent_silent);
        } else {
            ctx.ui.info("SKIP f-qemu-killed: kata only (runc runs no QEMU)");
            skipped.push("f-qemu-killed");
        }
        r.scenario("f-invalid-spec", &["badcwd", "badexe"], fault_invalid_spec);
    }
    r.scenario("e-no-leftovers", &[], scenario_no_leftovers);

    let results = std::mem::take(&mut r.results);
    let guest_kernel = r.guest_kernel.take();
    let failed: Vec<&str> = results.iter().filter(|s| !s.passed).map(|s| s.name.as_str()).collect();
    let passed = results.len() - failed.len();
    if ctx.json {
        ctx.print_json(&json!({
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
        }))?;
    }
    drop(env);
    ctx.ui.info(&format!("test e2e: {passed} passed, {} failed", failed.len()));
    if !failed.is_empty() {
        bail!("test e2e failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn proc_of_self_is_read() {
        let me = read_proc(std::process::id()).expect("own /proc entry");
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(!me.argv.is_empty());
        assert!(pss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn oci_archive_is_deterministic_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let bb = dir.path().join("busybox");
        std::fs::write(&bb, b"#!not really busybox\n").unwrap();
        let ia = write_oci_archive(&bb, &a, 1_700_000_000).unwrap();
        let ib = write_oci_archive(&bb, &b, 1_700_000_000).unwrap();
        assert_eq!(file_sha256(&ia.archive).unwrap(), file_sha256(&ib.archive).unwrap());
        assert_eq!(ia.manifest_digest, ib.manifest_digest);
        let list = Command::new("tar").arg("-tf").arg(&ia.archive).output().unwrap();
        let names = String::from_utf8(list.stdout).unwrap();
        for want in ["./oci-layout", "./index.json", &format!("./blobs/sha256/{}", &ia.manifest_digest[7..])] {
            assert!(names.lines().any(|l| l == want), "{want} missing from:\n{names}");
        }
        let ic = write_oci_archive(&bb, &a, 1_700_000_001).unwrap();
        assert_ne!(ic.layer_digest, ia.layer_digest, "the epoch is part of the layer");
    }

    #[test]
    fn containerd_config_names_our_paths() {
        let l = ContainerdLayout::new(Path::new("/tmp/kata-e2e-x"));
        let c = containerd_config(&l);
        assert!(c.contains("root = \"/tmp/kata-e2e-x/root\""));
        assert!(c.contains("address = \"/tmp/kata-e2e-x/containerd.sock\""));
        assert!(c.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(c.starts_with("# Written") && c.contains("\nversion = 2\n"));
    }
}
