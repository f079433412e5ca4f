//! The private containerd the scenarios run against (its own root, state,
//! socket and config under a temp dir) and the `ctr` client for it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xtask::hash::bytes_sha256;

use super::bounded::run_bounded;
use super::host::{
    all_procs, environ_has, mounts_under, read_proc, signal, sockets_under, tail_lines, ProcInfo,
};
use super::{
    CONTAINERD_READY_TIMEOUT, CONTAINERD_STOP_TIMEOUT, KATA_RUNTIME, KATA_STATE_ROOT,
    LOG_TAIL_LINES, NAMESPACE, RUNC_RUNTIME, RUN_MARKER_ENV, SHIM_BINARY, SHIM_SOCKET_ROOT,
    WATCHED_PROGRAMS,
};

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
    pub(crate) fn new(dir: &Path) -> ContainerdLayout {
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

/// containerd's CRI plugin, for `test cri` (the e2e test runs without it).
#[derive(Debug, Clone)]
pub struct CriPlugin {
    /// The pod sandbox ("pause") image, imported locally beforehand.
    pub sandbox_image: String,
    /// Where the CNI network configuration lies.
    pub cni_conf_dir: PathBuf,
    /// Where the CNI plugins lie: [`CNI_BIN_DIR`] (Debian's), or a test's
    /// own dir of links to them and to its fixture plugins.
    pub cni_bin_dir: PathBuf,
    /// The Kata configuration of the `kata` handler, written as upstream's
    /// runtime option `ConfigPath`, which containerd hands the shim with
    /// each create (the CRI test sets no `KATA_CONF_FILE`).
    pub kata_config: Option<PathBuf>,
    /// The `kata` runtime table of a shipped containerd snippet (see
    /// `cri::shipped_kata_runtime`), used instead of the harness's own: the
    /// installed-package run wires the handler exactly as packagers ship it.
    pub shipped_kata_runtime: Option<toml::Table>,
}

/// Debian's containernetworking-plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CRI runtime handlers the config defines.
pub const KATA_HANDLER: &str = "kata";
pub const RUNC_HANDLER: &str = "runc";

/// The containerd config: version 2, own paths, overlayfs only. Without
/// `cri` the CRI plugin is disabled (no CNI noise) and `ctr run --runtime
/// io.containerd.kata.v2` names the runtime directly: containerd maps it to
/// the binary `containerd-shim-kata-v2` on its PATH; the CRI runtime table
/// is then inert. With `cri` the plugin runs with handlers `kata` and
/// `runc`, Debian's CNI plugins and the local sandbox image.
pub fn containerd_config(l: &ContainerdLayout, cri: Option<&CriPlugin>) -> String {
    let disabled_cri = if cri.is_some() {
        ""
    } else {
        "\n  \"io.containerd.grpc.v1.cri\","
    };
    let head = format!(
        r#"# Written by `cargo xtask test e2e`: a private containerd for the end-to-end tests.
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled_cri}
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
"#,
        root = l.root.display(),
        state = l.state.display(),
        address = l.address.display(),
        opt = l.opt_dir.display(),
    );
    let Some(cri) = cri else {
        return format!(
            r#"{head}
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
    runtime_type = "{KATA_RUNTIME}"
"#
        );
    };
    let kata_options = cri
        .kata_config
        .as_ref()
        .map(|p| {
            format!(
                "\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{KATA_HANDLER}.options]\n      ConfigPath = \"{}\"",
                p.display()
            )
        })
        .unwrap_or_default();
    let text = format!(
        r#"{head}
# CRI: this process lacks CAP_SYS_RESOURCE (restrict_oom_score_adj), the
# host has no AppArmor or SELinux profile for us, pod network namespaces are
# mounted under the private state dir (the leftover scan looks there), and
# the streaming server listens inside the test's netns only.
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{RUNC_HANDLER}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNC_HANDLER}]
      runtime_type = "{RUNC_RUNTIME}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{KATA_HANDLER}]
      runtime_type = "{KATA_RUNTIME}"{kata_options}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"#,
        sandbox_image = cri.sandbox_image,
        conf_dir = cri.cni_conf_dir.display(),
        bin_dir = cri.cni_bin_dir.display(),
    );
    match &cri.shipped_kata_runtime {
        None => text,
        Some(kata) => with_kata_runtime(&text, kata),
    }
}

/// `config` with its `kata` CRI runtime table replaced by `kata`, the way
/// the shipped snippet tells an administrator to copy it in (containerd 1.6
/// replaces a plugin's whole table on `imports`, so a config that sets up
/// the CRI plugin cannot import it). The document is re-serialised, which
/// drops the harness's comments: a header says where it came from.
fn with_kata_runtime(config: &str, kata: &toml::Table) -> String {
    let mut doc: toml::Table =
        toml::from_str(config).expect("the harness's containerd config is TOML (unit-tested)");
    let runtimes = [
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
    ]
    .iter()
    .fold(&mut doc, |t, k| {
        t.get_mut(*k)
            .and_then(toml::Value::as_table_mut)
            .expect("the harness's CRI config has a runtimes table (unit-tested)")
    });
    runtimes.insert(KATA_HANDLER.into(), toml::Value::Table(kata.clone()));
    format!(
        "# Written by `cargo xtask test`: a private containerd with CRI; the `{KATA_HANDLER}` runtime table is the installed package's containerd snippet.\n{}",
        toml::to_string(&doc).expect("a TOML table serialises")
    )
}

/// How a [`PrivateContainerd`] is set up beyond its paths.
#[derive(Debug, Clone)]
pub struct ContainerdSetup {
    /// The containerd namespace `ctr` and the checks use (`k8s.io` for CRI).
    pub namespace: String,
    pub cri: Option<CriPlugin>,
    /// A network namespace (`/run/netns/NAME`) containerd is started in:
    /// the CRI test's pod network never touches the host's.
    pub netns: Option<PathBuf>,
}

impl Default for ContainerdSetup {
    fn default() -> Self {
        ContainerdSetup {
            namespace: NAMESPACE.into(),
            cri: None,
            netns: None,
        }
    }
}

/// A running private containerd; dropping it stops containerd and removes
/// every trace (see the module doc).
pub struct PrivateContainerd {
    pub layout: ContainerdLayout,
    pub log: PathBuf,
    pub(super) child: std::cell::RefCell<Option<Child>>,
    /// containerd's pid (it changes with [`PrivateContainerd::restart`]).
    pub pid: std::cell::Cell<u32>,
    /// When the first containerd of this run started.
    pub start_ticks: u64,
    /// `RUN_MARKER_ENV=<token>`, as found in /proc/PID/environ.
    pub marker: String,
    token: String,
    /// containerd's PATH (the shim dir first) and extra environment.
    path: OsString,
    env: Vec<(String, String)>,
    pub setup: ContainerdSetup,
    /// Container ids handed out, for targeted cleanup and checks.
    pub(super) ids: std::cell::RefCell<BTreeSet<String>>,
    pub(super) keep: bool,
    pub(super) temp: Option<tempfile::TempDir>,
}

impl PrivateContainerd {
    /// `env` is added to containerd's environment (and so to every shim's);
    /// `shim_dir`, when given, goes first on its PATH.
    /// A fresh temp dir for [`PrivateContainerd::start`]. Short base: the
    /// grpc socket path must stay under the 107-byte sun_path limit, and so
    /// must containerd's derived ttrpc socket.
    pub fn temp_dir() -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("kata-e2e-")
            .tempdir_in("/tmp")
            .context("create a temp dir in /tmp")
    }

    /// The file containerd runs for `program` (a shim binary name): the
    /// first executable of that name on containerd's PATH.
    pub fn program_on_path(&self, program: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        std::env::split_paths(&self.path)
            .map(|d| d.join(program))
            .find(|p| {
                std::fs::metadata(p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }

    /// Starts containerd in `temp` (from [`PrivateContainerd::temp_dir`]).
    pub fn start(
        temp: tempfile::TempDir,
        log: &Path,
        shim: Option<&Path>,
        env: &[(String, String)],
        keep: bool,
        setup: ContainerdSetup,
    ) -> Result<PrivateContainerd> {
        for tool in ["containerd", "ctr"] {
            if xtask::tools::which(tool).is_none() {
                bail!("{tool} is not installed: apt-get install containerd (or `cargo xtask doctor --install`)");
            }
        }
        for line in super::network::remove_dead_runs_netns() {
            eprintln!("test: {line}");
        }
        let layout = ContainerdLayout::new(temp.path());
        if layout.address.as_os_str().len() + ".ttrpc".len() > 100 {
            bail!(
                "socket path {} is too long for a unix socket",
                layout.address.display()
            );
        }
        for d in [
            &layout.root,
            &layout.state,
            &layout.bin_dir,
            &layout.fifo_dir,
            &layout.opt_dir,
        ] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        if let Some(shim) = shim {
            let link = layout.bin_dir.join(SHIM_BINARY);
            std::os::unix::fs::symlink(shim, &link)
                .with_context(|| format!("link {}", link.display()))?;
        }
        std::fs::write(
            &layout.config,
            containerd_config(&layout, setup.cri.as_ref()),
        )?;
        if let Some(d) = log.parent() {
            std::fs::create_dir_all(d)?;
        }
        let log_file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let token = format!(
            "{}-{}",
            std::process::id(),
            temp.path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
        let marker = format!("{RUN_MARKER_ENV}={token}");
        let mut path = OsString::from(&layout.bin_dir);
        if let Some(p) = std::env::var_os("PATH") {
            path.push(":");
            path.push(p);
        }
        let mut cd = PrivateContainerd {
            layout,
            log: log.to_path_buf(),
            child: Default::default(),
            pid: Default::default(),
            start_ticks: 0,
            marker,
            token,
            path,
            env: env.to_vec(),
            setup,
            ids: Default::default(),
            keep,
            temp: Some(temp),
        };
        cd.spawn(log_file)?;
        cd.start_ticks = read_proc(cd.pid.get()).map(|p| p.start_ticks).unwrap_or(0);
        cd.wait_ready()?;
        Ok(cd)
    }

    /// Starts the containerd process itself, its output into `log_file`.
    fn spawn(&self, log_file: std::fs::File) -> Result<()> {
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&self.layout.config)
            .env("PATH", &self.path)
            .env(RUN_MARKER_ENV, &self.token);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // Kept open until the spawn: the child enters it before exec.
        let netns = match &self.setup.netns {
            Some(p) => Some(
                std::fs::File::open(p)
                    .with_context(|| format!("open network namespace {}", p.display()))?,
            ),
            None => None,
        };
        if let Some(ns) = &netns {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = ns.as_raw_fd();
            // SAFETY: setns(2) is async-signal-safe and touches no memory of
            // the parent; the fd stays open in the parent until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().context("cannot start containerd")?;
        drop(netns);
        self.pid.set(child.id());
        *self.child.borrow_mut() = Some(child);
        Ok(())
    }

    /// Stops containerd (SIGTERM: the shims and their sandboxes live on, as
    /// on a node whose containerd is upgraded) and starts it again on the
    /// same state, appending to the same log.
    pub fn restart(&self) -> Result<()> {
        let old = self.child.borrow_mut().take();
        if let Some(mut child) = old {
            host_support::process::stop_child(
                &mut child,
                Some(nix::sys::signal::Signal::SIGTERM),
                CONTAINERD_STOP_TIMEOUT,
            )
            .context("stop containerd")?;
        }
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        self.spawn(log_file)?;
        self.wait_ready()
    }

    pub(super) fn wait_ready(&self) -> Result<()> {
        let t = Instant::now();
        loop {
            let exited = self
                .child
                .borrow_mut()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "containerd exited at start ({status}); log {}:\n{}",
                    self.log.display(),
                    tail_lines(&self.log, LOG_TAIL_LINES)
                );
            }
            if self.layout.address.exists() {
                let out = run_bounded(
                    self.ctr().command(&["version"]),
                    None,
                    Duration::from_secs(10),
                )?;
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
        Ctr {
            address: self.layout.address.clone(),
            namespace: self.setup.namespace.clone(),
            fifo_dir: self.layout.fifo_dir.clone(),
        }
    }

    /// A container id unique to this run, remembered for the checks.
    pub fn new_id(&self, name: &str) -> String {
        let id = format!("e2e-{}-{name}", std::process::id());
        self.ids.borrow_mut().insert(id.clone());
        id
    }

    /// Remembers an id containerd chose (CRI pods and containers), for the
    /// process scan and the leftover checks.
    pub fn remember_id(&self, id: &str) {
        self.ids.borrow_mut().insert(id.to_string());
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
            .filter(|p| p.pid != self.pid.get() && p.pid != me && !p.zombie)
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
        let key = format!(
            "{}/{}/{}",
            self.layout.address.display(),
            self.setup.namespace,
            id
        );
        Path::new(SHIM_SOCKET_ROOT).join(bytes_sha256(key.as_bytes()))
    }

    /// Everything of ours that should be gone once no container exists.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.our_processes() {
            out.push(format!(
                "process {} ({}) still runs: {} [threads: {}]",
                p.pid,
                p.program(),
                p.cmdline(),
                thread_states(p.pid)
            ));
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
                out.push(format!(
                    "kata state dir {} still exists",
                    kata_state.display()
                ));
            }
            // The shim's virtiofsd source dir, where container rootfs are mounted.
            let shared = Path::new(KATA_STATE_ROOT)
                .join("shared/sandboxes")
                .join(&id);
            for m in mounts_under(&shared) {
                out.push(format!("mount {} is still there", m.display()));
            }
            if shared.exists() {
                out.push(format!("kata shared dir {} still exists", shared.display()));
            }
            let monitor = Path::new(runtime::shim::monitor::SANDBOXES_DIR).join(&id);
            if monitor.exists() {
                out.push(format!(
                    "shim monitor directory {} still exists",
                    monitor.display()
                ));
            }
            let sock = self.shim_socket(&id);
            if sock.exists() {
                out.push(format!(
                    "shim socket {} (container {id}) still exists",
                    sock.display()
                ));
            }
            let bundle = self
                .layout
                .state
                .join("io.containerd.runtime.v2.task")
                .join(&self.setup.namespace)
                .join(&id);
            if bundle.exists() {
                out.push(format!("bundle {} still exists", bundle.display()));
            }
        }
        // Taps and tc filters the shim made in the test's pod namespaces.
        out.extend(super::network::network_leftovers());
        for s in sockets_under(&self.layout.state) {
            out.push(format!(
                "socket {} is left in containerd's state dir",
                s.display()
            ));
        }
        let ctr = self.ctr();
        for (what, args) in [
            ("task", ["tasks", "ls", "-q"]),
            ("container", ["containers", "ls", "-q"]),
        ] {
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
        let _ = run_bounded(
            ctr.command(&["tasks", "kill", "-a", "-s", "SIGKILL", id]),
            None,
            t,
        );
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

    pub(super) fn stop(&mut self) {
        for id in self.ids() {
            if matches!(self.ctr().task_status(&id), Ok(Some(_))) {
                self.force_remove(&id);
            }
        }
        let child = self.child.borrow_mut().take();
        if let Some(mut child) = child {
            let _ = host_support::process::stop_child(
                &mut child,
                Some(nix::sys::signal::Signal::SIGTERM),
                CONTAINERD_STOP_TIMEOUT,
            );
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
                eprintln!(
                    "test e2e: --keep: containerd dir kept at {}",
                    kept.display()
                );
            } else if let Err(e) = temp.close() {
                eprintln!(
                    "test e2e: warning: cannot remove {}: {e}",
                    self.layout.dir.display()
                );
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
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// `ctr run` with our runtime, snapshotter and FIFO dir (ctr's default
    /// FIFO dir is /run/containerd/fifo: outside what we own).
    pub fn run_command(
        &self,
        runtime: &str,
        flags: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.command(&["run", "--runtime", runtime, "--snapshotter", "overlayfs"]);
        cmd.arg("--fifo-dir")
            .arg(&self.fifo_dir)
            .args(flags)
            .arg(image)
            .arg(id)
            .args(args);
        cmd
    }

    pub fn exec_command(&self, id: &str, exec_id: &str, args: &[&str]) -> Command {
        let mut cmd = self.command(&["tasks", "exec", "--exec-id", exec_id]);
        cmd.arg("--fifo-dir").arg(&self.fifo_dir).arg(id).args(args);
        cmd
    }

    /// The STATUS column of `ctr tasks ls` for `id`, None when it has no task.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        let out = run_bounded(
            self.command(&["tasks", "ls"]),
            None,
            Duration::from_secs(30),
        )?
        .require_success()?;
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
        bail!(
            "task {id} is {:?} after {:?}, not {want}",
            last.unwrap_or_else(|| "gone".into()),
            timeout
        )
    }
}

/// Each thread of `pid` as `name:state:wchan` (what it is blocked in), so
/// that a process that should have exited says where it is stuck.
fn thread_states(pid: u32) -> String {
    let task = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&task) else {
        return "gone".into();
    };
    let mut threads: Vec<String> = entries
        .flatten()
        .map(|e| {
            let read = |f: &str| {
                std::fs::read_to_string(e.path().join(f))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_else(|_| "?".into())
            };
            // stat: "tid (comm) S ...": the state follows the last ')'.
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            format!("{}:{state}:{}", read("comm"), read("wchan"))
        })
        .collect();
    threads.sort();
    threads.join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{containerd_config, thread_states, ContainerdLayout, CriPlugin};

    #[test]
    fn thread_states_name_each_thread_and_what_it_waits_in() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::Builder::new()
            .name("parked-probe".into())
            .spawn(move || rx.recv())
            .unwrap();
        // Wait until the thread is asleep in the kernel.
        let me = std::process::id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let seen = loop {
            let s = thread_states(me);
            if s.split(' ')
                .any(|t| t.starts_with("parked-probe:S:") && !t.ends_with(":0"))
                || std::time::Instant::now() > deadline
            {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        tx.send(()).unwrap();
        parked.join().unwrap().unwrap();
        assert!(
            seen.split(' ')
                .any(|t| t.starts_with("parked-probe:S:") && t.contains("futex")),
            "{seen}"
        );
        assert_eq!(thread_states(u32::MAX), "gone");
    }

    #[test]
    fn containerd_config_names_our_paths() {
        let l = ContainerdLayout::new(Path::new("/tmp/kata-e2e-x"));
        let c = containerd_config(&l, None);
        assert!(c.contains("root = \"/tmp/kata-e2e-x/root\""));
        assert!(c.contains("address = \"/tmp/kata-e2e-x/containerd.sock\""));
        assert!(
            c.contains("\n  \"io.containerd.grpc.v1.cri\","),
            "CRI disabled: {c}"
        );
        assert!(c.starts_with("# Written") && c.contains("\nversion = 2\n"));
    }

    #[test]
    fn containerd_config_with_cri_has_both_handlers_and_cni() {
        let l = ContainerdLayout::new(Path::new("/tmp/kata-e2e-x"));
        let cri = CriPlugin {
            sandbox_image: "localhost/pause:1".into(),
            cni_conf_dir: "/tmp/kata-e2e-x/cni".into(),
            cni_bin_dir: super::CNI_BIN_DIR.into(),
            kata_config: Some("/tmp/kata-e2e-x/configuration.toml".into()),
            shipped_kata_runtime: None,
        };
        let c = containerd_config(&l, Some(&cri));
        assert!(
            !c.contains("\n  \"io.containerd.grpc.v1.cri\","),
            "CRI enabled: {c}"
        );
        for want in [
            "sandbox_image = \"localhost/pause:1\"",
            "restrict_oom_score_adj = true",
            "runtimes.kata]\n      runtime_type = \"io.containerd.kata.v2\"",
            "runtimes.runc]\n      runtime_type = \"io.containerd.runc.v2\"",
            "ConfigPath = \"/tmp/kata-e2e-x/configuration.toml\"",
            "bin_dir = \"/usr/lib/cni\"",
            "conf_dir = \"/tmp/kata-e2e-x/cni\"",
            "snapshotter = \"overlayfs\"",
        ] {
            assert!(c.contains(want), "{want} missing from:\n{c}");
        }
        let parsed: toml::Table = toml::from_str(&c).expect("valid TOML");
        assert!(
            parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
                .get("kata")
                .is_some()
        );
    }

    #[test]
    fn a_shipped_kata_runtime_replaces_the_harness_table_and_keeps_the_rest() {
        let l = ContainerdLayout::new(Path::new("/tmp/kata-e2e-x"));
        let shipped: toml::Table = toml::from_str(
            "runtime_type = \"io.containerd.kata.v2\"\nprivileged_without_host_devices = true\n[options]\nConfigPath = \"/opt/kata/c.toml\"\n",
        )
        .unwrap();
        let cri = CriPlugin {
            sandbox_image: "localhost/pause:1".into(),
            cni_conf_dir: "/tmp/kata-e2e-x/cni".into(),
            cni_bin_dir: super::CNI_BIN_DIR.into(),
            kata_config: Some("/tmp/harness.toml".into()),
            shipped_kata_runtime: Some(shipped.clone()),
        };
        let c = containerd_config(&l, Some(&cri));
        let parsed: toml::Table = toml::from_str(&c).expect("valid TOML");
        let cri_t = &parsed["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri_t["containerd"]["runtimes"]["kata"],
            toml::Value::Table(shipped),
            "{c}"
        );
        assert!(!c.contains("/tmp/harness.toml"), "{c}");
        assert_eq!(
            cri_t["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(cri_t["sandbox_image"].as_str(), Some("localhost/pause:1"));
        assert_eq!(cri_t["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(
            cri_t["cni"]["conf_dir"].as_str(),
            Some("/tmp/kata-e2e-x/cni")
        );
        assert_eq!(parsed["version"].as_integer(), Some(2));
        assert_eq!(
            parsed["grpc"]["address"].as_str(),
            Some("/tmp/kata-e2e-x/containerd.sock")
        );
    }
}
