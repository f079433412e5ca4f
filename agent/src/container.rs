//! The containers of the sandbox: their bundles, processes, stdio, cgroups,
//! and the libcontainer calls behind the container methods of the API.
//!
//! # Paths (the contract with the runtime on the host)
//! With `run` = /run/kata-containers (`KATA_AGENT_RUN_DIR` in service mode):
//! - `run/shared/containers` is where the runtime mounts the shared
//!   filesystem (virtio-fs tag `kataShared`, storage driver "virtio-fs",
//!   given in CreateSandbox); a container's rootfs is
//!   `run/shared/containers/<container_id>/rootfs`.
//! - `Spec.Root.Path` may be empty or relative (then it is taken relative to
//!   `run/shared/containers/<container_id>/`, so "rootfs" is the usual
//!   value), or absolute inside `run` (e.g. a rootfs storage of the
//!   CreateContainer request mounted at `run/<container_id>/rootfs`).
//!   Anything outside `run`, or with a `..` component, is refused.
//! - the agent makes the bundle `run/<container_id>/` (config.json, the
//!   rootfs bind-mounted at `run/<container_id>/rootfs`), as upstream does,
//!   and keeps libcontainer's state in `run/.libcontainer/`.
//! - the container's cgroup is `linux.cgroupsPath` when absolute (no `..`),
//!   else `/kata/<container_id>`, under /sys/fs/cgroup (cgroup v2); not `/`,
//!   the agent's own cgroup or a parent of it, nor one equal to, inside or
//!   above another container's (SignalProcess and RemoveContainer kill every
//!   process in it).
//! - a bind mount's source is an absolute path below `run/shared` (the
//!   runtime sends `run/shared/containers/<container_id>/mounts/<name>`),
//!   `run/sandbox` or a storage of the sandbox or of the request, without a
//!   symlink component below `run`. Storages are mounted strictly below
//!   `run` (`local` ones below `run/sandbox`), see [`storage`].
//! - the OCI `linux.seccomp` profile is checked here and installed by the
//!   libcontainer helper right before the workload's execve, see
//!   [`crate::seccomp`].
//!
//! # Pods
//! The first container created in the sandbox (CRI's pause container)
//! holds the pod's namespaces: every later container's `ipc` and `uts`
//! entries are set to its (hostname included), and its `pid` entry too
//! with `sandbox_pidns` (CreateContainer's, or CreateSandbox's for all).
//! Each container's cgroup is watched for OOM kills ([`crate::oom`]) and
//! UpdateContainer rewrites its limits ([`crate::cgroup_limits`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocols::agent::{CgroupStats, CreateContainerRequest, ExecProcessRequest};
use ttrpc::Code;

use crate::oom::OomEvents;
use crate::reaper::Reaper;
use crate::runtime_helper::{HELPER_FLAG, NO_CONSOLE};
use crate::storage::{self, Prepared};
use crate::{cgroup_limits, cgroup_stats, oci};

/// Mount point of the cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Parent cgroup of containers whose spec gives no absolute cgroupsPath.
pub const DEFAULT_CGROUP_PARENT: &str = "/kata";
/// libcontainer's state directory under the run directory.
pub const STATE_DIR: &str = ".libcontainer";
/// The rootfs directory inside a container's shared directory and bundle.
pub const ROOTFS_DIR: &str = "rootfs";
/// How long a helper run (create or exec, prestart hooks included) may
/// take; the agent's reaper waits for it.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the container process may take to hand over its terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An error with the status code the API reports it with.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Failure>;

/// How long RemoveContainer with timeout 0 waits for SIGKILLed processes.
pub const KILLED_EXIT_BOUND: Duration = Duration::from_secs(10);

fn fail(code: Code, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn internal(message: impl Into<String>) -> Failure {
    fail(Code::INTERNAL, message)
}

/// Container and exec ids follow the rule the shim applies too
/// ([`protocols::ids`]): they become path components here.
fn check_id(what: &str, id: &str) -> Result<()> {
    protocols::ids::check_id(what, id).map_err(|m| fail(Code::INVALID_ARGUMENT, m))
}

/// An absolute path without `..` (the only forms accepted from requests).
fn check_clean_absolute(what: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(fail(
            Code::INVALID_ARGUMENT,
            format!("{what} {path:?} must be an absolute path"),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(fail(
            Code::INVALID_ARGUMENT,
            format!("{what} {path:?} must not contain '..'"),
        ));
    }
    Ok(())
}

/// The init process's cwd and executable, checked against the rootfs
/// before the container is created, so that a bad one is an error naming
/// it (libcontainer reports only that a syscall failed). Only what can be
/// known for sure is refused: a path component that is a non-directory,
/// or an executable that is not there. A path through a symlink or under
/// one of the spec's mounts (not mounted yet) is left to the runtime.
fn check_process_paths(rootfs: &Path, spec: &protocols::oci::Spec) -> Result<()> {
    let Some(process) = spec.Process.as_ref() else {
        return Ok(());
    };
    let mounted = |p: &Path| {
        spec.Mounts
            .iter()
            .any(|m| !m.destination.is_empty() && p.starts_with(&m.destination))
    };
    // What `path` (absolute, in the container) is in the rootfs.
    #[derive(PartialEq)]
    enum Found {
        Dir,
        NotDir,
        Missing,
        /// A component before the last is not a directory.
        Blocked,
        /// Through a symlink or a mount: not knowable here.
        Unknown,
    }
    let probe = |path: &Path| -> Found {
        let names: Vec<_> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut at = rootfs.to_path_buf();
        let mut inside = PathBuf::from("/");
        for (i, name) in names.iter().enumerate() {
            inside.push(name);
            if mounted(&inside) {
                return Found::Unknown;
            }
            at.push(name);
            let last = i + 1 == names.len();
            match fs::symlink_metadata(&at) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Missing,
                Err(_) => return Found::Unknown,
                Ok(m) if m.file_type().is_symlink() => return Found::Unknown,
                Ok(m) if m.is_dir() => {}
                Ok(_) if last => return Found::NotDir,
                Ok(_) => return Found::Blocked,
            }
        }
        Found::Dir
    };
    let bad = |msg: String| Err(fail(Code::INVALID_ARGUMENT, msg));
    // A missing cwd is created; one under or at a file cannot be.
    if !process.Cwd.is_empty()
        && matches!(
            probe(Path::new(&process.Cwd)),
            Found::NotDir | Found::Blocked
        )
    {
        return bad(format!(
            "process.cwd {}: not a directory in the container's rootfs (a path component is a file)",
            process.Cwd
        ));
    }
    let exe = process.Args.first().map(String::as_str).unwrap_or("");
    if exe.contains('/') {
        match probe(&Path::new("/").join(exe)) {
            Found::Missing | Found::Blocked => {
                return bad(format!(
                    "process.args[0] {exe}: no such file in the container's rootfs"
                ))
            }
            Found::Dir => return bad(format!("process.args[0] {exe}: is a directory")),
            _ => {}
        }
    } else if !exe.is_empty() {
        let path = process
            .Env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let nowhere = path.split(':').filter(|d| d.starts_with('/')).all(|d| {
            matches!(
                probe(&Path::new(d).join(exe)),
                Found::Missing | Found::Blocked
            )
        });
        if nowhere {
            return bad(format!(
                "process.args[0] {exe}: not found in PATH {path} of the container's rootfs"
            ));
        }
    }
    Ok(())
}

/// Where the agent keeps and expects container files.
#[derive(Debug, Clone)]
pub struct Layout {
    pub run_dir: PathBuf,
}

impl Layout {
    pub fn shared_containers(&self) -> PathBuf {
        self.run_dir.join("shared/containers")
    }
    pub fn bundle(&self, cid: &str) -> PathBuf {
        self.run_dir.join(cid)
    }
    pub fn state_root(&self) -> PathBuf {
        self.run_dir.join(STATE_DIR)
    }
    /// Where the shared filesystem (virtio-fs) is mounted: bind mount
    /// sources the runtime sends live below it.
    pub fn shared_dir(&self) -> PathBuf {
        self.run_dir.join("shared")
    }
    pub fn sandbox_dir(&self) -> PathBuf {
        self.run_dir.join(storage::SANDBOX_DIR)
    }

    /// The container's rootfs as the request names it, checked to stay
    /// inside the run directory (also after resolving symlinks).
    pub fn resolve_rootfs(&self, cid: &str, root_path: &str) -> Result<PathBuf> {
        let requested = Path::new(root_path);
        if requested.components().any(|c| c == Component::ParentDir) {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                format!("Spec.Root.Path {root_path:?} must not contain '..'"),
            ));
        }
        let path = if root_path.is_empty() {
            self.shared_containers().join(cid).join(ROOTFS_DIR)
        } else if requested.is_relative() {
            self.shared_containers().join(cid).join(requested)
        } else {
            requested.to_path_buf()
        };
        if !path.starts_with(&self.run_dir) {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                format!(
                    "Spec.Root.Path {root_path:?} is outside {}; the rootfs must be under {}/<container_id>/{ROOTFS_DIR} or a storage below {}",
                    self.run_dir.display(),
                    self.shared_containers().display(),
                    self.run_dir.display()
                ),
            ));
        }
        let real = fs::canonicalize(&path).map_err(|e| {
            fail(
                Code::INVALID_ARGUMENT,
                format!("container rootfs {}: {e}", path.display()),
            )
        })?;
        let real_run = fs::canonicalize(&self.run_dir).unwrap_or_else(|_| self.run_dir.clone());
        if !real.starts_with(&real_run) {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                format!(
                    "container rootfs {} resolves to {}, outside {}",
                    path.display(),
                    real.display(),
                    self.run_dir.display()
                ),
            ));
        }
        if !real.is_dir() {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                format!("container rootfs {} is not a directory", path.display()),
            ));
        }
        Ok(real)
    }
}

/// A process of a container (its init or an exec) and the agent's ends of
/// its stdio.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    stdin: Mutex<Option<File>>,
    stdout: Option<File>,
    stderr: Option<File>,
    /// The pty master when the process has a terminal (stdin/stdout go
    /// through it too).
    tty: Option<File>,
    /// The exit code once WaitProcess collected it (later calls repeat it).
    exit_code: Mutex<Option<i32>>,
}

impl Process {
    fn new(exec_id: &str, pid: i32, stdio: AgentStdio) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            pid,
            stdin: Mutex::new(stdio.stdin),
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            tty: stdio.tty,
            exit_code: Mutex::new(None),
        }
    }

    fn exited(&self) -> bool {
        self.exit_code
            .try_lock()
            .map(|c| c.is_some())
            .unwrap_or(false)
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    /// The bind mount of the rootfs at bundle/rootfs (when it was made).
    rootfs_mount: Option<PathBuf>,
    cgroup_dir: PathBuf,
    storages: Vec<Prepared>,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.id || exec_id == self.init.exec_id {
            return Ok(self.init.clone());
        }
        self.execs.get(exec_id).cloned().ok_or_else(|| {
            fail(
                Code::NOT_FOUND,
                format!("container {:?} has no process {exec_id:?}", self.id),
            )
        })
    }
}

/// The agent's ends of a new process's stdio, and the ends it gets.
struct AgentStdio {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    tty: Option<File>,
}

fn pipe() -> Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| internal(format!("pipe: {e}")))?;
    Ok((File::from(r), File::from(w)))
}

/// Pipes for stdin/stdout/stderr: (agent ends, process ends).
fn make_pipes() -> Result<(AgentStdio, [OwnedFd; 3])> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        AgentStdio {
            stdin: Some(in_w),
            stdout: Some(out_r),
            stderr: Some(err_r),
            tty: None,
        },
        [in_r.into(), out_w.into(), err_w.into()],
    ))
}

/// What the helper needs to give the new process its stdio.
enum HelperStdio {
    Pipes([OwnedFd; 3]),
    Console(PathBuf),
}

/// Runs the libcontainer helper and returns the pid of the new container
/// process, tracked by the reaper.
///
/// The reaper's table lock is held from before the helper starts until the
/// container process is tracked: the process becomes the agent's child when
/// the helper exits, and may exit at once (an exec of `true`); nothing can be
/// reaped meanwhile, so its status cannot be lost. The helper itself is
/// waited for here, directly, for the same reason.
fn run_helper(
    reaper: &Reaper,
    action: &str,
    state_root: &Path,
    id: &str,
    path: &Path,
    stdio: HelperStdio,
) -> Result<i32> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_FLAG)
        .arg(action)
        .arg(state_root)
        .arg(id)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pipes = match stdio {
        HelperStdio::Console(socket) => {
            cmd.arg(socket);
            None
        }
        HelperStdio::Pipes(fds) => {
            cmd.arg(NO_CONSOLE);
            let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
            // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // first out of the way of 3..=5, then into place (dup2
                    // clears close-on-exec on the copies)
                    let mut high = [0; 3];
                    for (i, fd) in raw.iter().enumerate() {
                        high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                        if high[i] < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    for (i, fd) in high.iter().enumerate() {
                        if libc::dup2(*fd, crate::runtime_helper::STDIO_FDS[i]) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
            Some(fds)
        }
    };
    let outcome = reaper.track(|| {
        let mut child = cmd.spawn()?;
        drop(pipes); // the process's ends now live in the helper only
        let helper = Pid::from_raw(child.id() as i32);
        let mut out = String::new();
        let mut err = String::new();
        if let Some(s) = child.stdout.take() {
            if let Err(e) = read_until_eof(s, &mut out, HELPER_TIMEOUT) {
                // the reaper is blocked while this runs: never wait forever
                let _ = kill(helper, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(helper, None);
                return Err(e);
            }
        }
        if let Some(mut s) = child.stderr.take() {
            s.read_to_string(&mut err)?;
        }
        let status = loop {
            match nix::sys::wait::waitpid(helper, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(io::Error::from)?,
            }
        };
        let pid = match (status, out.trim().parse::<i32>()) {
            (nix::sys::wait::WaitStatus::Exited(_, 0), Ok(pid)) if pid > 0 => pid,
            _ => {
                let why = err.trim();
                return Err(io::Error::other(if why.is_empty() {
                    format!("the libcontainer helper ended with {status:?} and no message")
                } else {
                    why.to_string()
                }));
            }
        };
        Ok((pid, pid))
    });
    outcome.map_err(|e| internal(e.to_string()))
}

/// Reads a pipe to its end, giving up after `limit`.
fn read_until_eof(pipe: impl Into<OwnedFd>, text: &mut String, limit: Duration) -> io::Result<()> {
    let mut file = File::from(pipe.into());
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready =
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the libcontainer helper did not finish within {limit:?}"),
            ));
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(())
}

/// Receives the pty master libcontainer sends over the console socket.
fn receive_console(listener: &UnixListener) -> Result<File> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    listener
        .set_nonblocking(true)
        .map_err(|e| internal(format!("console socket: {e}")))?;
    let deadline = Instant::now() + CONSOLE_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                return Err(internal(format!(
                    "the container process did not send its terminal: {e}"
                )))
            }
        }
    };
    stream
        .set_nonblocking(false)
        .map_err(|e| internal(format!("console socket: {e}")))?;
    stream.set_read_timeout(Some(CONSOLE_TIMEOUT)).ok();
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| internal(format!("receive the terminal: {e}")))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| internal(format!("receive the terminal: {e}")))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the fd was just received and is owned by nobody else.
                return Ok(unsafe { File::from_raw_fd(*fd) });
            }
        }
    }
    Err(internal(
        "the console socket message carried no terminal fd",
    ))
}

/// stdio set-up for a new process: pipes, or a console socket whose pty
/// master is collected after the helper ran.
fn prepare_stdio(
    terminal: bool,
    socket_path: &Path,
) -> Result<(Option<AgentStdio>, Option<UnixListener>, HelperStdio)> {
    if terminal {
        let _ = fs::remove_file(socket_path);
        let listener = UnixListener::bind(socket_path)
            .map_err(|e| internal(format!("console socket {}: {e}", socket_path.display())))?;
        Ok((
            None,
            Some(listener),
            HelperStdio::Console(socket_path.to_path_buf()),
        ))
    } else {
        let (agent, fds) = make_pipes()?;
        Ok((Some(agent), None, HelperStdio::Pipes(fds)))
    }
}

fn finish_stdio(
    agent: Option<AgentStdio>,
    listener: Option<UnixListener>,
    socket_path: &Path,
) -> Result<AgentStdio> {
    if let Some(agent) = agent {
        return Ok(agent);
    }
    let listener = listener.ok_or_else(|| internal("no console listener"))?;
    let master = receive_console(&listener);
    let _ = fs::remove_file(socket_path);
    let master = master?;
    let dup = |f: &File| {
        f.try_clone()
            .map_err(|e| internal(format!("dup terminal: {e}")))
    };
    Ok(AgentStdio {
        stdin: Some(dup(&master)?),
        stdout: Some(dup(&master)?),
        stderr: None,
        tty: Some(master),
    })
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::rpc::write_atomically(path, bytes)
        .map_err(|e| internal(format!("write {}: {e}", path.display())))
}

/// The containers of this agent.
pub struct Containers {
    layout: Layout,
    reaper: Reaper,
    table: Mutex<HashMap<String, Container>>,
    /// Serialises create/exec/remove (helper runs, bundle directories).
    lifecycle: Mutex<()>,
    /// The namespaces the pod's containers share (under `lifecycle`).
    pod: Mutex<Option<PodNamespaces>>,
    /// CreateSandbox's sandbox_pidns: every container joins the pod's PID
    /// namespace, as if each asked for it.
    pub sandbox_pidns: std::sync::atomic::AtomicBool,
    pub oom: OomEvents,
}

impl Containers {
    pub fn new(layout: Layout, reaper: Reaper) -> Containers {
        Containers {
            layout,
            reaper,
            table: Mutex::new(HashMap::new()),
            lifecycle: Mutex::new(()),
            pod: Mutex::new(None),
            sandbox_pidns: std::sync::atomic::AtomicBool::new(false),
            oom: OomEvents::start(),
        }
    }

    fn pod(&self) -> std::sync::MutexGuard<'_, Option<PodNamespaces>> {
        self.pod.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New limits for a running container's cgroup (UpdateContainer).
    pub fn update(&self, cid: &str, resources: &protocols::oci::LinuxResources) -> Result<()> {
        let dir = self.with_container(cid, |c| Ok(c.cgroup_dir.clone()))?;
        let n = cgroup_limits::apply(&dir, resources)
            .map_err(|f| fail(f.code, format!("container {cid}: {}", f.message)))?;
        log::info!("container {cid}: {n} cgroup limit(s) updated");
        Ok(())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_container<T>(
        &self,
        cid: &str,
        f: impl FnOnce(&mut Container) -> Result<T>,
    ) -> Result<T> {
        check_id("container_id", cid)?;
        let mut table = self.table();
        let c = table
            .get_mut(cid)
            .ok_or_else(|| fail(Code::NOT_FOUND, format!("container {cid:?} does not exist")))?;
        f(c)
    }

    fn process(&self, cid: &str, exec_id: &str) -> Result<Arc<Process>> {
        if !exec_id.is_empty() {
            check_id("exec_id", exec_id)?;
        }
        self.with_container(cid, |c| c.process(exec_id))
    }

    /// A bind mount's source: an absolute path in the shared directory, the
    /// sandbox directory or a storage of the sandbox or of the request, with
    /// no symbolic link below the run directory (the agent's own files and
    /// the guest's are not the container's to mount).
    fn check_bind_source(
        &self,
        index: usize,
        m: &protocols::oci::Mount,
        sandbox_storages: &[PathBuf],
        request_storages: &[PathBuf],
    ) -> Result<()> {
        let what = format!("mounts[{index}].source (bind mount on {:?})", m.destination);
        let source = Path::new(&m.source);
        check_clean_absolute(&what, source)?;
        let source: PathBuf = source.components().collect();
        let roots = [self.layout.shared_dir(), self.layout.sandbox_dir()];
        let inside = roots
            .iter()
            .chain(sandbox_storages)
            .chain(request_storages)
            .any(|r| source.starts_with(r) && r.starts_with(&self.layout.run_dir));
        if !inside {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                format!(
                    "{what} {:?} is outside the sandbox's shared directory {} and its storages",
                    m.source,
                    self.layout.shared_dir().display()
                ),
            ));
        }
        if let Some(link) = storage::symlink_below(&self.layout.run_dir, &source) {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                format!(
                    "{what} {:?}: {} is a symbolic link",
                    m.source,
                    link.display()
                ),
            ));
        }
        Ok(())
    }

    /// A container's cgroup (relative to the cgroup root, normalised) must
    /// be a cgroup of its own: SignalProcess and RemoveContainer kill every
    /// process in it. Refused: the root, the agent's own cgroup or one of
    /// its parents, and one equal to, inside or above another container's.
    fn check_cgroup(&self, path: &Path) -> Result<()> {
        let refuse = |why: String| {
            fail(
                Code::INVALID_ARGUMENT,
                format!("linux.cgroupsPath {:?}: {why}", path.display().to_string()),
            )
        };
        if path.components().all(|c| c == Component::RootDir) {
            return Err(refuse(
                "the root cgroup holds every process of the guest".into(),
            ));
        }
        if let Some(own) = own_cgroup() {
            if own.starts_with(path) {
                return Err(refuse(format!(
                    "the agent itself runs in {}",
                    own.display()
                )));
            }
        }
        let dir = Path::new(CGROUP_ROOT).join(path.strip_prefix("/").unwrap_or(path));
        for (other, c) in self.table().iter() {
            if dir.starts_with(&c.cgroup_dir) || c.cgroup_dir.starts_with(&dir) {
                return Err(refuse(format!(
                    "it is, contains or is inside the cgroup {} of container {other}",
                    c.cgroup_dir.display()
                )));
            }
        }
        Ok(())
    }

    /// `sandbox_storages`: the mount points of the sandbox's storages
    /// (CreateSandbox), where bind mount sources may be too.
    pub fn create(&self, req: &CreateContainerRequest, sandbox_storages: &[PathBuf]) -> Result<()> {
        let cid = req.container_id.as_str();
        check_id("container_id", cid)?;
        if !req.exec_id.is_empty() {
            check_id("exec_id", &req.exec_id)?;
        }
        let _serial = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if self.table().contains_key(cid) {
            return Err(fail(
                Code::ALREADY_EXISTS,
                format!("container {cid:?} already exists"),
            ));
        }
        if !req.devices.is_empty() {
            return Err(fail(
                Code::UNIMPLEMENTED,
                "CreateContainer: devices are not implemented by this agent yet",
            ));
        }
        let Some(grpc_spec) = req.OCI.as_ref() else {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                "CreateContainer: the OCI spec (field OCI) is missing",
            ));
        };
        let Some(process) = grpc_spec.Process.as_ref() else {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                "CreateContainer: OCI.Process is missing",
            ));
        };
        if process.Args.is_empty() {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                "CreateContainer: OCI.Process.Args is empty",
            ));
        }
        let request_storages: Vec<PathBuf> = req
            .storages
            .iter()
            .map(|s| PathBuf::from(&s.mount_point))
            .collect();
        for (i, m) in grpc_spec.Mounts.iter().enumerate() {
            check_clean_absolute("mount destination", Path::new(&m.destination))?;
            let is_bind =
                m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
            if is_bind {
                self.check_bind_source(i, m, sandbox_storages, &request_storages)?;
            } else if m.source.starts_with('/') {
                check_clean_absolute("mount source", Path::new(&m.source))?;
            }
        }
        let mut grpc_spec = grpc_spec.clone();
        // the profile is installed by the helper (crate::seccomp); one that
        // cannot be enforced is refused here, naming the field
        if let Some(linux) = grpc_spec.Linux.as_ref() {
            let spec_json = oci::spec_json(&grpc_spec);
            let filter = crate::seccomp::compile(spec_json.pointer("/linux/seccomp"))
                .map_err(|e| fail(Code::INVALID_ARGUMENT, format!("CreateContainer: {e}")))?;
            if let Some(f) = filter {
                log::info!(
                    "container {cid}: seccomp profile with {} syscall rule(s): {} BPF instructions",
                    linux.Seccomp.as_ref().map_or(0, |s| s.Syscalls.len()),
                    f.program.len()
                );
            }
        }
        let cgroup_path = match grpc_spec.Linux.as_ref().map(|l| l.CgroupsPath.as_str()) {
            Some(p) if p.starts_with('/') => {
                check_clean_absolute("linux.cgroupsPath", Path::new(p))?;
                Path::new(p).components().collect()
            }
            _ => Path::new(DEFAULT_CGROUP_PARENT).join(cid),
        };
        self.check_cgroup(&cgroup_path)?;
        let terminal = process.Terminal;

        // storages first: the rootfs may be one of them
        let mut storages = Vec::new();
        for s in req.storages.iter() {
            match storage::prepare(s, &self.layout.run_dir) {
                Ok(p) => storages.push(p),
                Err(e) => {
                    storages.iter().rev().for_each(storage::release);
                    let code = match e {
                        storage::StorageError::Unsupported { .. } => Code::UNIMPLEMENTED,
                        storage::StorageError::Invalid { .. } => Code::INVALID_ARGUMENT,
                        storage::StorageError::Failed { .. } => Code::INTERNAL,
                    };
                    return Err(fail(code, format!("CreateContainer: {e}")));
                }
            }
        }
        let mut undo = Undo::default();
        undo.storages = storages;
        let root_path = grpc_spec
            .Root
            .as_ref()
            .map(|r| r.Path.clone())
            .unwrap_or_default();
        let rootfs = self.layout.resolve_rootfs(cid, &root_path)?;
        check_process_paths(&rootfs, &grpc_spec)?;
        let bundle = self.layout.bundle(cid);
        if bundle.exists() {
            return Err(fail(
                Code::ALREADY_EXISTS,
                format!("bundle directory {} already exists", bundle.display()),
            ));
        }
        let bundle_rootfs = bundle.join(ROOTFS_DIR);
        fs::create_dir_all(&bundle_rootfs)
            .map_err(|e| internal(format!("create {}: {e}", bundle_rootfs.display())))?;
        undo.bundle = Some(bundle.clone());
        if rootfs != bundle_rootfs {
            mount(
                Some(&rootfs),
                &bundle_rootfs,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| {
                internal(format!(
                    "bind {} on {}: {e}",
                    rootfs.display(),
                    bundle_rootfs.display()
                ))
            })?;
            undo.rootfs_mount = Some(bundle_rootfs.clone());
        }

        let mut root = grpc_spec.Root.as_ref().cloned().unwrap_or_default();
        root.Path = bundle_rootfs.to_string_lossy().into_owned();
        grpc_spec.Root = Some(root).into();
        let mut linux = grpc_spec.Linux.as_ref().cloned().unwrap_or_default();
        linux.CgroupsPath = cgroup_path.to_string_lossy().into_owned();
        let join_pidns = req.sandbox_pidns
            || self
                .sandbox_pidns
                .load(std::sync::atomic::Ordering::Relaxed);
        match self.pod().as_ref() {
            Some(pod) => {
                log::info!(
                    "container {cid} joins the IPC and UTS{} namespaces of sandbox container {}",
                    if join_pidns { " and PID" } else { "" },
                    pod.holder
                );
                join_pod_namespaces(&mut linux, &pod.paths(), join_pidns);
            }
            None if join_pidns => {
                return Err(fail(
                    Code::FAILED_PRECONDITION,
                    format!("CreateContainer {cid}: sandbox_pidns: there is no sandbox container yet whose PID namespace it could join; create the pod's sandbox container first"),
                ))
            }
            None => {}
        }
        grpc_spec.Linux = Some(linux).into();
        let spec = oci::to_oci_spec(&grpc_spec)
            .map_err(|e| fail(Code::INVALID_ARGUMENT, format!("CreateContainer: {e}")))?;
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| internal(format!("serialize config.json: {e}")))?;
        write_file_atomically(&bundle.join("config.json"), &json)?;

        let socket_path = bundle.join("console.sock");
        let (agent_stdio, listener, helper_stdio) = prepare_stdio(terminal, &socket_path)?;
        let state_root = self.layout.state_root();
        fs::create_dir_all(&state_root)
            .map_err(|e| internal(format!("create {}: {e}", state_root.display())))?;
        let pid = run_helper(
            &self.reaper,
            "create",
            &state_root,
            cid,
            &bundle,
            helper_stdio,
        )
        .map_err(|f| fail(f.code, format!("CreateContainer {cid}: {}", f.message)))?;
        let stdio = match finish_stdio(agent_stdio, listener, &socket_path) {
            Ok(s) => s,
            Err(f) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.reaper.wait(pid);
                delete_libcontainer_state(&state_root, cid, &cgroup_path);
                return Err(f);
            }
        };
        let exec_id = if req.exec_id.is_empty() {
            cid
        } else {
            req.exec_id.as_str()
        };
        let container = Container {
            id: cid.to_string(),
            bundle,
            rootfs_mount: undo.rootfs_mount.take(),
            cgroup_dir: Path::new(CGROUP_ROOT)
                .join(cgroup_path.strip_prefix("/").unwrap_or(&cgroup_path)),
            storages: std::mem::take(&mut undo.storages),
            init: Arc::new(Process::new(exec_id, pid, stdio)),
            execs: HashMap::new(),
        };
        undo.bundle = None;
        log::info!("container {cid} created, init pid {pid}");
        if let Err(e) = self.oom.watch(cid, &container.cgroup_dir) {
            log::warn!(
                "container {cid}: OOM kills are not reported: watch {}/{}: {e}",
                container.cgroup_dir.display(),
                crate::oom::MEMORY_EVENTS
            );
        }
        let mut pod = self.pod();
        if pod.is_none() {
            // The first container of the sandbox (CRI's pause container)
            // holds the pod's namespaces.
            match PodNamespaces::of(cid, pid) {
                Ok(p) => *pod = Some(p),
                Err(e) => log::warn!("container {cid}: the pod's namespaces cannot be kept: {e}"),
            }
        }
        drop(pod);
        self.table().insert(cid.to_string(), container);
        Ok(())
    }

    fn load(&self, cid: &str) -> Result<libcontainer::container::Container> {
        libcontainer::container::Container::load(self.layout.state_root().join(cid))
            .map_err(|e| internal(format!("container {cid}: load libcontainer state: {e}")))
    }

    pub fn start(&self, cid: &str) -> Result<()> {
        self.with_container(cid, |_| Ok(()))?;
        let mut c = self.load(cid)?;
        c.start().map_err(|e| match e {
            libcontainer::error::LibcontainerError::IncorrectStatus(s) => fail(
                Code::FAILED_PRECONDITION,
                format!("container {cid} cannot be started: it is {s:?}"),
            ),
            e => internal(format!("start container {cid}: {e}")),
        })?;
        log::info!("container {cid} started");
        Ok(())
    }

    pub fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let cid = req.container_id.as_str();
        check_id("container_id", cid)?;
        check_id("exec_id", &req.exec_id)?;
        let Some(process) = req.process.as_ref() else {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                "ExecProcess: the process (field process) is missing",
            ));
        };
        if process.Args.is_empty() {
            return Err(fail(
                Code::INVALID_ARGUMENT,
                "ExecProcess: process.Args is empty",
            ));
        }
        let _serial = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let bundle = self.with_container(cid, |c| {
            if req.exec_id == c.init.exec_id || c.execs.contains_key(&req.exec_id) {
                return Err(fail(
                    Code::ALREADY_EXISTS,
                    format!("container {cid} already has a process {:?}", req.exec_id),
                ));
            }
            Ok(c.bundle.clone())
        })?;
        let oci_process = oci::to_oci_process(process)
            .map_err(|e| fail(Code::INVALID_ARGUMENT, format!("ExecProcess: {e}")))?;
        let process_file = bundle.join(format!("exec-{}.json", req.exec_id));
        let json = serde_json::to_vec_pretty(&oci_process)
            .map_err(|e| internal(format!("serialize process.json: {e}")))?;
        write_file_atomically(&process_file, &json)?;
        let socket_path = bundle.join(format!("console-{}.sock", req.exec_id));
        let (agent_stdio, listener, helper_stdio) = prepare_stdio(process.Terminal, &socket_path)?;
        let result = run_helper(
            &self.reaper,
            "exec",
            &self.layout.state_root(),
            cid,
            &process_file,
            helper_stdio,
        );
        let _ = fs::remove_file(&process_file);
        let pid = result.map_err(|f| {
            let _ = fs::remove_file(&socket_path);
            fail(
                f.code,
                format!("ExecProcess {cid}/{}: {}", req.exec_id, f.message),
            )
        })?;
        let stdio = match finish_stdio(agent_stdio, listener, &socket_path) {
            Ok(s) => s,
            Err(f) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.reaper.wait(pid);
                return Err(f);
            }
        };
        log::info!("container {cid}: exec {} started, pid {pid}", req.exec_id);
        let process = Arc::new(Process::new(&req.exec_id, pid, stdio));
        self.with_container(cid, |c| {
            c.execs.insert(req.exec_id.clone(), process);
            Ok(())
        })
    }

    /// The exit code: the status, or 128 + signal number.
    pub fn wait(&self, cid: &str, exec_id: &str) -> Result<i32> {
        let p = self.process(cid, exec_id)?;
        let mut code = p.exit_code.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = *code {
            return Ok(c);
        }
        let status = self.reaper.wait(p.pid).ok_or_else(|| {
            internal(format!(
                "process {} of container {cid} is not tracked by the reaper",
                p.pid
            ))
        })?;
        *code = Some(status.code());
        Ok(status.code())
    }

    pub fn signal(&self, cid: &str, exec_id: &str, signal: u32) -> Result<()> {
        let sig = Signal::try_from(signal as i32).map_err(|_| {
            fail(
                Code::INVALID_ARGUMENT,
                format!("signal {signal} is not a valid signal number"),
            )
        })?;
        let (pids, what) = if exec_id.is_empty() {
            let (init, dir) =
                self.with_container(cid, |c| Ok((c.init.clone(), c.cgroup_dir.clone())))?;
            let mut pids = cgroup_pids(&dir);
            if !init.exited() && !pids.contains(&init.pid) {
                pids.push(init.pid);
            }
            (pids, format!("all processes of container {cid}"))
        } else {
            let p = self.process(cid, exec_id)?;
            (vec![p.pid], format!("process {exec_id} of container {cid}"))
        };
        for pid in pids {
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(internal(format!("signal {sig} to {what} (pid {pid}): {e}"))),
            }
        }
        Ok(())
    }

    pub fn read_stdout(&self, cid: &str, exec_id: &str, len: u32) -> Result<Vec<u8>> {
        let p = self.process(cid, exec_id)?;
        let f = p
            .stdout
            .as_ref()
            .ok_or_else(|| fail(Code::FAILED_PRECONDITION, "the process has no stdout"))?;
        read_stream(f, len)
    }

    pub fn read_stderr(&self, cid: &str, exec_id: &str, len: u32) -> Result<Vec<u8>> {
        let p = self.process(cid, exec_id)?;
        let f = p.stderr.as_ref().ok_or_else(|| {
            fail(
                Code::FAILED_PRECONDITION,
                "the process has a terminal: its stderr is merged into stdout (ReadStdout)",
            )
        })?;
        read_stream(f, len)
    }

    pub fn write_stdin(&self, cid: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let p = self.process(cid, exec_id)?;
        let mut stdin = p.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let f = stdin
            .as_mut()
            .ok_or_else(|| fail(Code::FAILED_PRECONDITION, "stdin of the process is closed"))?;
        f.write_all(data)
            .map_err(|e| internal(format!("write stdin of pid {}: {e}", p.pid)))?;
        Ok(data.len() as u32)
    }

    pub fn close_stdin(&self, cid: &str, exec_id: &str) -> Result<()> {
        let p = self.process(cid, exec_id)?;
        let mut stdin = p.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(f), Some(_)) = (stdin.as_mut(), p.tty.as_ref()) {
            // a terminal has no separate write end to close: send the EOF
            // character (^D) as a user typing it would
            let _ = f.write_all(&[4]);
        }
        *stdin = None;
        Ok(())
    }

    pub fn resize_tty(&self, cid: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        let p = self.process(cid, exec_id)?;
        let tty = p
            .tty
            .as_ref()
            .ok_or_else(|| fail(Code::FAILED_PRECONDITION, "the process has no terminal"))?;
        let size = libc::winsize {
            ws_row: rows.min(u16::MAX as u32) as u16,
            ws_col: cols.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
            return Err(internal(format!(
                "resize terminal: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    pub fn stats(&self, cid: &str) -> Result<CgroupStats> {
        let dir = self.with_container(cid, |c| Ok(c.cgroup_dir.clone()))?;
        cgroup_stats::collect(&dir).map_err(|e| internal(format!("stats of container {cid}: {e}")))
    }

    pub fn pause(&self, cid: &str) -> Result<()> {
        self.with_container(cid, |_| Ok(()))?;
        self.load(cid)?.pause().map_err(|e| {
            fail(
                Code::FAILED_PRECONDITION,
                format!("pause container {cid}: {e}"),
            )
        })
    }

    pub fn resume(&self, cid: &str) -> Result<()> {
        self.with_container(cid, |_| Ok(()))?;
        self.load(cid)?.resume().map_err(|e| {
            fail(
                Code::FAILED_PRECONDITION,
                format!("resume container {cid}: {e}"),
            )
        })
    }

    /// Kills every process of the container, waits for them (up to
    /// `timeout`; zero: up to [`KILLED_EXIT_BOUND`]), and removes its cgroup,
    /// state, bundle, rootfs bind mount and storages. A process still alive
    /// then leaves the container in place and fails DEADLINE_EXCEEDED.
    pub fn remove(&self, cid: &str, timeout: Duration) -> Result<()> {
        check_id("container_id", cid)?;
        let _serial = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let c = self
            .table()
            .remove(cid)
            .ok_or_else(|| fail(Code::NOT_FOUND, format!("container {cid:?} does not exist")))?;
        // processes killed by the removal are not OOM kills
        self.oom.unwatch(cid);
        // a frozen cgroup would keep its processes from dying
        let _ = fs::write(c.cgroup_dir.join("cgroup.freeze"), "0");
        for pid in cgroup_pids(&c.cgroup_dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let processes: Vec<Arc<Process>> = std::iter::once(c.init.clone())
            .chain(c.execs.values().cloned())
            .collect();
        // Timeout 0 means "no grace period", not "wait forever": every
        // process has been sent SIGKILL, and one that still does not exit
        // (stuck in the kernel) must not hold the lifecycle lock, and with
        // it every other container's lifecycle, for ever.
        let timeout = if timeout.is_zero() {
            KILLED_EXIT_BOUND
        } else {
            timeout
        };
        let deadline = Instant::now() + timeout;
        let stuck = |c: Container, pid: i32| {
            self.table().insert(cid.to_string(), c);
            fail(
                Code::DEADLINE_EXCEEDED,
                format!("RemoveContainer {cid}: process {pid} did not exit within {timeout:?}"),
            )
        };
        for p in &processes {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            // A WaitProcess holds the exit code while it waits for the
            // process: wait for it no longer than for the process itself.
            let Some(mut code) = lock_until(&p.exit_code, deadline) else {
                if self.reaper_tracks(p.pid) {
                    return Err(stuck(c, p.pid));
                }
                continue; // gone: that WaitProcess collects it
            };
            if code.is_some() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reaper.wait_timeout(p.pid, Some(left)) {
                Some(status) => *code = Some(status.code()),
                None if self.reaper_tracks(p.pid) => {
                    drop(code);
                    return Err(stuck(c, p.pid));
                }
                None => {}
            }
        }
        if self.table().is_empty() {
            // the pod's last container is gone: its namespaces go with it
            *self.pod() = None;
        }
        let mut problems = Vec::new();
        let state_root = self.layout.state_root();
        match libcontainer::container::Container::load(state_root.join(cid)) {
            Ok(mut lc) => {
                if let Err(e) = lc.delete(true) {
                    problems.push(format!("libcontainer delete: {e}"));
                }
            }
            Err(e) => problems.push(format!("load libcontainer state: {e}")),
        }
        if c.cgroup_dir.exists() {
            if let Err(e) = fs::remove_dir(&c.cgroup_dir) {
                problems.push(format!("remove cgroup {}: {e}", c.cgroup_dir.display()));
            }
        }
        let _ = fs::remove_dir_all(state_root.join(cid));
        if let Some(m) = &c.rootfs_mount {
            if let Err(e) = umount2(m, MntFlags::MNT_DETACH) {
                problems.push(format!("unmount {}: {e}", m.display()));
            }
        }
        if let Err(e) = fs::remove_dir_all(&c.bundle) {
            problems.push(format!("remove bundle {}: {e}", c.bundle.display()));
        }
        c.storages.iter().rev().for_each(storage::release);
        if problems.is_empty() {
            log::info!("container {cid} removed");
            Ok(())
        } else {
            Err(internal(format!(
                "RemoveContainer {cid}: {}",
                problems.join("; ")
            )))
        }
    }

    fn reaper_tracks(&self, pid: i32) -> bool {
        // a pid still alive (signal 0 succeeds) has not been collected
        kill(Pid::from_raw(pid), None).is_ok()
    }
}

/// The IPC, UTS and PID namespaces of a pod's sandbox container, which
/// the pod's other containers join (as upstream's agent does for IPC and
/// UTS always, for PID with sandbox_pidns). Held open by the agent, so
/// IPC and UTS outlive an early exit of the sandbox container's process
/// (a PID namespace cannot be joined once its init is gone: the kernel's
/// rule).
struct PodNamespaces {
    holder: String,
    ipc: File,
    uts: File,
    pid: File,
}

/// The paths a container spec names the pod's namespaces by.
struct PodNamespacePaths {
    ipc: String,
    uts: String,
    pid: String,
}

impl PodNamespaces {
    fn of(holder: &str, pid: i32) -> io::Result<PodNamespaces> {
        let open = |ns: &str| {
            File::open(format!("/proc/{pid}/ns/{ns}"))
                .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}/ns/{ns}: {e}")))
        };
        Ok(PodNamespaces {
            holder: holder.to_string(),
            ipc: open("ipc")?,
            uts: open("uts")?,
            pid: open("pid")?,
        })
    }

    /// The agent's open descriptors, by path: libcontainer (in the helper,
    /// a child of the agent) opens the path and setns(2)es into it.
    fn paths(&self) -> PodNamespacePaths {
        let me = std::process::id();
        let path = |f: &File| format!("/proc/{me}/fd/{}", f.as_raw_fd());
        PodNamespacePaths {
            ipc: path(&self.ipc),
            uts: path(&self.uts),
            pid: path(&self.pid),
        }
    }
}

/// A pod's container spec: its IPC and UTS namespaces (when it asks for
/// its own) become the pod's, and with `join_pidns` its PID namespace too.
/// A container without an IPC or UTS entry (the guest's, like
/// hostIPC/hostNetwork pods) keeps that. The UTS namespace carries the
/// pod's hostname: libcontainer sets `hostname` only in a new one.
fn join_pod_namespaces(
    linux: &mut protocols::oci::Linux,
    pod: &PodNamespacePaths,
    join_pidns: bool,
) {
    for ns in linux.Namespaces.iter_mut() {
        match ns.Type.as_str() {
            "ipc" => ns.Path = pod.ipc.clone(),
            "uts" => ns.Path = pod.uts.clone(),
            "pid" if join_pidns => ns.Path = pod.pid.clone(),
            _ => {}
        }
    }
    if join_pidns && !linux.Namespaces.iter().any(|n| n.Type == "pid") {
        let mut ns = protocols::oci::LinuxNamespace::new();
        ns.Type = "pid".into();
        ns.Path = pod.pid.clone();
        linux.Namespaces.push(ns);
    }
}

/// What a failed CreateContainer undoes.
#[derive(Default)]
struct Undo {
    storages: Vec<Prepared>,
    rootfs_mount: Option<PathBuf>,
    bundle: Option<PathBuf>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(m) = &self.rootfs_mount {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
        if let Some(b) = &self.bundle {
            let _ = fs::remove_dir_all(b);
        }
        self.storages.iter().rev().for_each(storage::release);
    }
}

fn delete_libcontainer_state(state_root: &Path, cid: &str, cgroup_path: &Path) {
    if let Ok(mut lc) = libcontainer::container::Container::load(state_root.join(cid)) {
        let _ = lc.delete(true);
    }
    let _ = fs::remove_dir_all(state_root.join(cid));
    let _ = fs::remove_dir(
        Path::new(CGROUP_ROOT).join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path)),
    );
}

/// Locks `m`, giving up at `deadline`.
fn lock_until<T>(m: &Mutex<T>, deadline: Instant) -> Option<std::sync::MutexGuard<'_, T>> {
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// The agent's cgroup v2 path (from /proc/self/cgroup).
fn own_cgroup() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| Path::new(p.trim()).components().collect())
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// One read of at most `len` bytes; end of stream is an error, as upstream
/// reports it (the runtime stops copying on any error).
fn read_stream(f: &File, len: u32) -> Result<Vec<u8>> {
    let len = if len == 0 {
        32 * 1024
    } else {
        len.min(1 << 20) as usize
    };
    let mut buf = vec![0u8; len];
    loop {
        match (&*f).read(&mut buf) {
            Ok(0) => return Err(internal("eof")),
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // a pty master reads EIO once the last process holding the
            // terminal is gone: that is its end of stream
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Err(internal("eof")),
            Err(e) => return Err(internal(format!("read: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_cwd_or_missing_executable_is_named_before_create() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("bin/busybox"), b"").unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", root.join("lnk")).unwrap();
        let spec = |cwd: &str, exe: &str, mounts: &[&str]| {
            let mut p = protocols::oci::Process::new();
            p.Cwd = cwd.into();
            p.Args = vec![exe.into()];
            p.Env = vec!["PATH=/usr/bin:/bin".into()];
            let mut s = protocols::oci::Spec::new();
            s.Process = Some(p).into();
            for dest in mounts {
                let mut m = protocols::oci::Mount::new();
                m.destination = (*dest).into();
                s.Mounts.push(m);
            }
            s
        };
        let err = |s: protocols::oci::Spec| {
            let e = check_process_paths(root, &s).unwrap_err();
            assert_eq!(e.code, Code::INVALID_ARGUMENT);
            e.message
        };
        // Fine: plain, a cwd to be created, PATH lookup, through a symlink,
        // under a mount, an executable not known here.
        for (cwd, exe, mounts) in [
            ("/", "sh", &[][..]),
            ("/data/new/dir", "/bin/busybox", &[][..]),
            ("/lnk/x", "/lnk/tool", &[][..]),
            ("/vol/x", "/vol/bin/tool", &["/vol"][..]),
            ("/", "busybox", &[][..]),
        ] {
            assert!(
                check_process_paths(root, &spec(cwd, exe, mounts)).is_ok(),
                "{cwd} {exe}"
            );
        }
        assert!(err(spec("/bin/busybox/nowhere", "sh", &[])).contains("/bin/busybox/nowhere"));
        assert!(err(spec("/bin/busybox", "sh", &[])).contains("process.cwd /bin/busybox"));
        assert!(err(spec("/", "/does/not/exist", &[])).contains("/does/not/exist: no such file"));
        assert!(err(spec("/", "/bin", &[])).contains("is a directory"));
        assert!(err(spec("/", "nosuchtool", &[])).contains("not found in PATH /usr/bin:/bin"));
    }

    use protocols::ids::valid_id;

    #[test]
    fn pod_containers_join_the_sandbox_containers_namespaces() {
        let ns = |t: &str, p: &str| {
            let mut n = protocols::oci::LinuxNamespace::new();
            n.Type = t.into();
            n.Path = p.into();
            n
        };
        let pod = PodNamespacePaths {
            ipc: "/proc/1/fd/7".into(),
            uts: "/proc/1/fd/8".into(),
            pid: "/proc/1/fd/9".into(),
        };
        let spec = || {
            let mut l = protocols::oci::Linux::new();
            l.Namespaces = vec![ns("pid", ""), ns("ipc", ""), ns("uts", ""), ns("mount", "")];
            l
        };
        let types = |l: &protocols::oci::Linux| -> Vec<(String, String)> {
            l.Namespaces
                .iter()
                .map(|n| (n.Type.clone(), n.Path.clone()))
                .collect()
        };
        let mut l = spec();
        join_pod_namespaces(&mut l, &pod, false);
        assert_eq!(
            types(&l),
            [
                ("pid".into(), "".into()),
                ("ipc".into(), pod.ipc.clone()),
                ("uts".into(), pod.uts.clone()),
                ("mount".into(), "".into())
            ]
        );
        let mut l = spec();
        join_pod_namespaces(&mut l, &pod, true);
        assert_eq!(l.Namespaces[0].Path, pod.pid);
        // no pid entry (a host-PID spec): sandbox_pidns still joins the pod's
        let mut l = protocols::oci::Linux::new();
        l.Namespaces = vec![ns("mount", "")];
        join_pod_namespaces(&mut l, &pod, true);
        assert_eq!(
            types(&l),
            [("mount".into(), "".into()), ("pid".into(), pod.pid.clone())]
        );
        // without an ipc/uts entry the container keeps the guest's
        let mut l = protocols::oci::Linux::new();
        join_pod_namespaces(&mut l, &pod, false);
        assert!(l.Namespaces.is_empty());
    }

    #[test]
    fn ids_follow_the_pattern() {
        // One-character ids work, as with runc and the shim.
        for ok in ["c1", "abc-DEF_1.2", "9z", "a", "7"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "_x", "a/b", "../x", "a b", "a\0b", "é1"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn rootfs_paths_must_stay_in_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let layout = Layout {
            run_dir: run.clone(),
        };
        let shared = layout.shared_containers().join("c1/rootfs");
        fs::create_dir_all(&shared).unwrap();
        let real_shared = fs::canonicalize(&shared).unwrap();
        assert_eq!(layout.resolve_rootfs("c1", "").unwrap(), real_shared);
        assert_eq!(layout.resolve_rootfs("c1", "rootfs").unwrap(), real_shared);
        assert_eq!(
            layout
                .resolve_rootfs("c1", shared.to_str().unwrap())
                .unwrap(),
            real_shared
        );
        let refused = |p: &str| layout.resolve_rootfs("c1", p).unwrap_err().code;
        assert_eq!(refused("../../etc"), Code::INVALID_ARGUMENT);
        assert_eq!(
            refused(&format!("{}/shared/../../outside", run.display())),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(refused("/etc"), Code::INVALID_ARGUMENT);
        // a symlink inside the run dir that points outside it
        fs::create_dir_all(layout.shared_containers().join("c2")).unwrap();
        std::os::unix::fs::symlink("/etc", layout.shared_containers().join("c2/rootfs")).unwrap();
        let e = layout.resolve_rootfs("c2", "").unwrap_err();
        assert_eq!(e.code, Code::INVALID_ARGUMENT);
        assert!(e.message.contains("outside"), "{}", e.message);
    }

    fn containers(run_dir: &Path) -> Containers {
        Containers::new(
            Layout {
                run_dir: run_dir.to_path_buf(),
            },
            Reaper::inert(),
        )
    }

    fn no_stdio() -> AgentStdio {
        AgentStdio {
            stdin: None,
            stdout: None,
            stderr: None,
            tty: None,
        }
    }

    /// A container in the table without anything behind it but `pid`.
    fn fake_container(cs: &Containers, cid: &str, cgroup_dir: PathBuf, pid: i32) {
        cs.table().insert(
            cid.to_string(),
            Container {
                id: cid.to_string(),
                bundle: cs.layout.bundle(cid),
                rootfs_mount: None,
                cgroup_dir,
                storages: Vec::new(),
                init: Arc::new(Process::new(cid, pid, no_stdio())),
                execs: HashMap::new(),
            },
        );
    }

    #[test]
    fn cgroups_of_their_own_only() {
        let cs = containers(Path::new("/run/kata-containers"));
        fake_container(&cs, "c1", Path::new(CGROUP_ROOT).join("kata/c1"), 1);
        let norm = |p: &str| -> PathBuf { Path::new(p).components().collect() };
        for bad in [
            "/",
            "//",
            "/.",
            "/kata/c1",
            "/kata/c1/",
            "/kata/./c1",
            "/kata/c1/sub",
            "/kata",
        ] {
            let e = cs.check_cgroup(&norm(bad)).unwrap_err();
            assert_eq!(e.code, Code::INVALID_ARGUMENT, "{bad}: {}", e.message);
            assert!(e.message.contains("linux.cgroupsPath"), "{}", e.message);
        }
        if let Some(own) = own_cgroup() {
            assert!(cs.check_cgroup(&own).is_err(), "{}", own.display());
        }
        for ok in ["/kata/c2", "/kata-c1", "/other/kata/c1"] {
            cs.check_cgroup(&norm(ok))
                .unwrap_or_else(|e| panic!("{ok}: {}", e.message));
        }
    }

    #[test]
    fn bind_sources_stay_in_the_shared_dir_and_storages() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let cs = containers(&run);
        let mounts = run.join("shared/containers/c1/mounts");
        fs::create_dir_all(&mounts).unwrap();
        std::os::unix::fs::symlink("/etc", mounts.join("link")).unwrap();
        let sandbox_storage = run.join("sandbox-storage");
        let request_storage = run.join("c1-volume");
        let bind = |source: &str| {
            let mut m = protocols::oci::Mount::new();
            m.destination = "/data".into();
            m.source = source.into();
            m.type_ = "bind".into();
            m.options = vec!["rbind".into()];
            cs.check_bind_source(
                3,
                &m,
                std::slice::from_ref(&sandbox_storage),
                std::slice::from_ref(&request_storage),
            )
        };
        let under = |p: &Path| p.to_str().unwrap().to_string();
        for ok in [
            under(&mounts.join("0-hosts")),
            under(&run.join("shared/containers/c1/mounts")),
            under(&run.join("sandbox/shm")),
            under(&sandbox_storage.join("x")),
            under(&request_storage),
        ] {
            bind(&ok).unwrap_or_else(|e| panic!("{ok}: {}", e.message));
        }
        for bad in [
            "/etc".to_string(),
            "/".to_string(),
            "relative/path".to_string(),
            under(&run),
            under(&run.join(".libcontainer/c2")),
            under(&run.join("c2/rootfs")),
            format!("{}-other/x", run.display()),
            under(&mounts.join("link")),
            under(&mounts.join("link/shadow")),
            format!("{}/../../../etc", mounts.display()),
        ] {
            let e = bind(&bad).unwrap_err();
            assert_eq!(e.code, Code::INVALID_ARGUMENT, "{bad}: {}", e.message);
            assert!(e.message.contains("mounts[3].source"), "{}", e.message);
        }
        // a storage outside the run directory widens nothing
        let mut m = protocols::oci::Mount::new();
        m.source = "/etc/x".into();
        m.type_ = "bind".into();
        assert!(cs
            .check_bind_source(0, &m, &[PathBuf::from("/etc")], &[])
            .is_err());
    }

    /// A kernel thread: alive, ignores SIGKILL, never anyone's child.
    fn kernel_thread() -> i32 {
        const PF_KTHREAD: u64 = 0x0020_0000;
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // flags: the 9th field, the 7th after the ")" ending the name
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let flags: u64 = after.split(' ').nth(6).unwrap().parse().unwrap();
            if flags & PF_KTHREAD != 0 {
                return pid;
            }
        }
        panic!("no kernel thread visible in /proc: this test needs the host's pid namespace");
    }

    #[test]
    #[ignore = "needs root and the host's pid namespace: run by cargo xtask test unit"]
    fn remove_with_timeout_zero_is_bounded_and_does_not_block_others() {
        // SAFETY: geteuid(2) cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let dir = tempfile::tempdir().unwrap();
        let cs = Arc::new(containers(&dir.path().join("run")));
        let stuck = kernel_thread();
        // tracked, never reaped: like a process stuck in the kernel
        cs.reaper.track(|| Ok((stuck, ()))).unwrap();
        fake_container(&cs, "stuck", dir.path().join("cg-stuck"), stuck);
        fake_container(&cs, "other", dir.path().join("cg-other"), stuck);
        // a WaitProcess on it holds its exit code while it waits
        let waiter = {
            let cs = cs.clone();
            std::thread::spawn(move || cs.wait("stuck", ""))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished());
        let started = Instant::now();
        let remover = {
            let cs = cs.clone();
            std::thread::spawn(move || cs.remove("stuck", Duration::ZERO))
        };
        // meanwhile other requests are served
        std::thread::sleep(Duration::from_millis(200));
        assert!(!remover.is_finished());
        let served = Instant::now();
        assert_eq!(cs.process("other", "").unwrap().pid, stuck);
        assert_eq!(cs.signal("nope", "", 9).unwrap_err().code, Code::NOT_FOUND);
        assert!(served.elapsed() < Duration::from_secs(1));
        let e = remover.join().unwrap().unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.code, Code::DEADLINE_EXCEEDED, "{}", e.message);
        assert!(
            took >= KILLED_EXIT_BOUND && took < KILLED_EXIT_BOUND + Duration::from_secs(3),
            "RemoveContainer took {took:?}"
        );
        // the container is still there and the lifecycle lock is free
        assert_eq!(cs.process("stuck", "").unwrap().pid, stuck);
        let _lock = cs.lifecycle.try_lock().expect("lifecycle lock released");
        assert!(!waiter.is_finished());
    }
}
