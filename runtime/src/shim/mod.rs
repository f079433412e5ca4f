//! `containerd-shim-kata-v2`: containerd's shim v2 for Kata.
//!
//! containerd runs the binary with the `start` action; that process spawns
//! the long-lived shim (same binary, no action) that serves the task API on
//! a unix socket and prints the socket address (the `containerd-shim`
//! crate's [`containerd_shim::run`] handles the protocol). The `delete`
//! action cleans up after a shim that died.
//!
//! One shim, and one VM, per sandbox: a plain `ctr run` container is its own
//! sandbox; a CRI container whose annotation `io.kubernetes.cri.sandbox-id`
//! names a sandbox is served by that sandbox's shim and joins its VM: the
//! `start` action answers with that shim's address and spawns nothing.

mod annotations;
pub mod monitor;
mod mounts;
mod runtime_options;
mod sandbox;
mod service;
mod sizing;
mod stats;
pub mod stdio;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, ExitSignal, Flags, StartOpts};

use crate::hypervisor::identity::{ProcessIdentity, SignalOutcome};

pub use annotations::{CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID, CRI_CONTAINER_TYPE, CRI_SANDBOX_ID};
pub use service::{Service, VM_DIED_STATUS};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.kata.v2";

pub use annotations::sandbox_id_of_bundle;
/// Container and exec ids: the rule the agent applies too
/// ([`protocols::ids`]).
pub use protocols::ids::valid_id;

fn invalid(msg: impl Into<String>) -> containerd_shim::Error {
    containerd_shim::Error::InvalidArgument(msg.into())
}

/// The `containerd-shim` crate's settings for this shim; pass them to
/// [`containerd_shim::run`] (the crate reads the reaper settings before it
/// calls [`containerd_shim::Shim::new`], so they cannot be changed there).
///
/// The crate's SIGCHLD reaper stays on: `containerd_shim::mount::mount_rootfs`
/// (the container rootfs mount) forks a child and waits for it through the
/// crate's exit monitor, which only that reaper feeds; without it every
/// container create waits for ever. The reaper is a `waitpid(-1)` loop, so
/// the runtime's own waits for QEMU and the daemons can fail with ECHILD:
/// the hypervisor layer treats that as "reaped elsewhere" and checks
/// `/proc` before calling a process gone.
pub fn shim_config() -> Config {
    Config {
        no_reaper: false,
        no_sub_reaper: false,
        default_log_level: if debug_wanted() { "debug" } else { "info" }.into(),
        ..Config::default()
    }
}

/// Debug logs: `RUST_LOG` mentions debug, or the configuration enables it.
fn debug_wanted() -> bool {
    let debug_env = std::env::var("RUST_LOG")
        .map(|v| v.contains("debug"))
        .unwrap_or(false);
    debug_env || crate::config::load().map(|c| c.debug()).unwrap_or(false)
}

/// What the `start` action does for a container.
#[derive(Debug, PartialEq, Eq)]
enum StartPlan {
    /// The container is its own sandbox (a pod sandbox, a plain `ctr run`
    /// container): spawn the shim that serves it.
    Spawn,
    /// The container joins pod sandbox `sid`: that sandbox's shim, at
    /// `address`, serves it; nothing is spawned.
    Join { sid: String, address: String },
}

/// The `start` action's plan for container `id` in `bundle`, under
/// containerd's `containerd_address` and `namespace`. Both ids are validated
/// before either names anything.
fn start_plan(
    bundle: &Path,
    id: &str,
    containerd_address: &str,
    namespace: &str,
) -> Result<StartPlan, String> {
    protocols::ids::check_id("container id (-id)", id)?;
    let sid = sandbox_id_of_bundle(bundle, id)?;
    if sid == id {
        return Ok(StartPlan::Spawn);
    }
    let address = containerd_shim::socket_address(containerd_address, namespace, &sid);
    Ok(StartPlan::Join { sid, address })
}

/// Whether something accepts connections at `address` (`unix://PATH`),
/// without waiting: a non-blocking connect, so a listener whose backlog is
/// full counts as serving (it exists) instead of blocking the `start`
/// action, which containerd kills when its request times out.
fn check_serving(address: &str) -> Result<(), String> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let addr = UnixAddr::new(path).map_err(|e| format!("{path}: {e}"))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        Ok(()) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(e) => Err(format!("{path}: {}", std::io::Error::from(e))),
    }
}

pub struct KataShim {
    namespace: String,
    /// containerd's address (`-address`): with the namespace and the
    /// sandbox id it names the shim's socket.
    address: String,
    id: String,
    /// The socket this shim serves (`-socket`, a `unix://` address).
    socket: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for KataShim {
    type T = Service;

    /// The settings (reaper, log level) come from [`shim_config`], given
    /// to `containerd_shim::run`: nothing to change here.
    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        KataShim {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            bundle: if args.bundle.is_empty() {
                std::env::current_dir().unwrap_or_default()
            } else {
                PathBuf::from(&args.bundle)
            },
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// A container that is its own sandbox gets a new shim (spawned; it
    /// serves the sandbox's socket). A container joining a pod gets the
    /// address of the shim already serving that pod, and nothing is
    /// spawned: as upstream Kata's shim v2 does for
    /// `io.kubernetes.cri.sandbox-id`.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let address = match start_plan(&self.bundle, &opts.id, &opts.address, &opts.namespace)
            .map_err(invalid)?
        {
            StartPlan::Spawn => {
                let grouping = opts.id.clone();
                containerd_shim::spawn(opts, &grouping, Vec::new())?.1
            }
            StartPlan::Join { sid, address } => {
                check_serving(&address).map_err(|e| {
                    containerd_shim::Error::Other(format!(
                        "container {} joins pod sandbox {sid}, whose shim does not serve: {e}",
                        opts.id
                    ))
                })?;
                address
            }
        };
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// Cleanup after a shim that died: its VM processes, mounts and state.
    fn delete_shim(&mut self) -> Result<api::DeleteResponse, containerd_shim::Error> {
        let state_root = crate::config::load()
            .map(|c| c.runtime.state_root)
            .unwrap_or_else(|_| PathBuf::from(crate::hypervisor::DEFAULT_STATE_ROOT));
        // Both ids name host paths below: nothing is touched unless both
        // are valid (nothing could have been created under an invalid one).
        protocols::ids::check_id("container id (-id)", &self.id).map_err(invalid)?;
        let sid = sandbox_id_of_bundle(&self.bundle, &self.id).map_err(invalid)?;
        let mut problems = cleanup_leftovers(&state_root, &sid, &self.id);
        if sid == self.id {
            // The dead shim served this sandbox's sockets; nothing removes
            // them once the shim was killed.
            let socket = containerd_shim::socket_address(&self.address, &self.namespace, &sid);
            if let Err(p) = remove_dead_socket(Path::new(socket.trim_start_matches("unix://"))) {
                problems.push(p);
            }
            problems.extend(remove_dead_monitor(Path::new(monitor::SANDBOXES_DIR), &sid));
        }
        for p in &problems {
            eprintln!("containerd-shim-kata-v2 delete {}: {p}", self.id);
        }
        let mut r = api::DeleteResponse::new();
        r.exit_status = 128 + libc::SIGKILL as u32;
        r.exited_at = containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::util::timestamp()?,
        );
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The crate stops the ttrpc server next, and that waits for every
        // call in progress: one that never returns would keep this shim,
        // and its socket, alive after containerd let it go. Upstream's shim
        // exits outright on shutdown; here the graceful stop gets a bound.
        exit_after(
            SHUTDOWN_GRACE,
            PathBuf::from(self.socket.trim_start_matches("unix://")),
            || std::process::exit(0),
        );
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

/// Stop what a dead shim left of sandbox `sid` (QEMU, then the vsock and
/// virtiofs daemons, each proven to be the process that was started),
/// unmount the container's rootfs and remove what the shim created for it
/// below the state root. Both ids are valid; nothing outside the state root
/// is touched and no symlink below it is followed.
fn cleanup_leftovers(state_root: &Path, sid: &str, cid: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let owns_sandbox = sid == cid;
    if owns_sandbox && sid != sandbox::SHARED_DIR_NAME {
        for (name, file) in crate::hypervisor::VM_PROCESSES {
            if let Err(p) = stop_recorded(state_root, &Path::new(sid).join(file), name) {
                problems.push(p);
            }
        }
    }
    let rel = mounts::shared_rel(sid, (!owns_sandbox).then_some(cid));
    problems.extend(mounts::unmount_and_remove(state_root, &rel));
    if owns_sandbox && sid != sandbox::SHARED_DIR_NAME {
        if let Err(e) = crate::state_fs::remove_below(state_root, Path::new(sid)) {
            problems.push(format!("remove: {e}"));
        }
    }
    problems
}

/// SIGKILL the process whose identity `state_root/record` holds, if it is
/// still that process. A missing record is fine (nothing was started).
fn stop_recorded(state_root: &Path, record: &Path, name: &str) -> Result<(), String> {
    let text = match crate::state_fs::read_below(state_root, record) {
        Ok(None) => return Ok(()),
        Ok(Some(text)) => text,
        Err(e) => return Err(format!("read {name}'s identity: {e}; {name} not signalled")),
    };
    let process = ProcessIdentity::from_record(&String::from_utf8_lossy(&text))
        .map_err(|e| format!("{}: {e}; {name} not signalled", record.display()))?;
    match process.signal(nix::sys::signal::Signal::SIGKILL) {
        Ok(SignalOutcome::Sent) | Ok(SignalOutcome::Gone) => Ok(()),
        Ok(SignalOutcome::Reused) => Err(format!(
            "pid {} is no longer this sandbox's {name}; not signalled",
            process.pid
        )),
        Err(e) => Err(format!("stop {name} (pid {}): {e}", process.pid)),
    }
}

/// Remove the socket of a shim that died: only a socket, and only if no
/// process accepts connections on it any more.
fn remove_dead_socket(path: &Path) -> Result<(), String> {
    // containerd runs this action as soon as it sees the shim disconnect,
    // which can be while the exiting shim still has its socket open: give
    // it a moment to go before calling the socket live.
    let deadline = std::time::Instant::now() + SHIM_EXIT_GRACE;
    loop {
        match remove_socket_if_dead(path) {
            Err(e) if e.live && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.map_err(|e| e.message),
        }
    }
}

/// The monitor socket and directory a dead shim left below `root`
/// (`/run/vc/sbs`): removed unless a live shim still serves them.
fn remove_dead_monitor(root: &Path, sid: &str) -> Option<String> {
    let socket = monitor::socket_path(root, sid);
    if let Err(p) = remove_dead_socket(&socket) {
        return Some(p);
    }
    crate::state_fs::remove_below(root, Path::new(sid))
        .err()
        .map(|e| format!("remove {}: {e}", root.join(sid).display()))
}

/// How long the ttrpc server may take to stop once the shim shuts down.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A watchdog for a shim that shuts down: unless the process has ended
/// within `grace`, it says so, removes `socket` (as the crate would have)
/// and calls `exit`.
fn exit_after(
    grace: std::time::Duration,
    socket: PathBuf,
    exit: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(grace);
        log::warn!(
            "shutdown: the ttrpc server has not stopped {grace:?} after shutdown (a call in \
             progress never returned); exiting"
        );
        use std::os::unix::fs::FileTypeExt;
        // Only a socket: the path comes from containerd's flags.
        let is_socket = std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
        if is_socket {
            if let Err(e) = std::fs::remove_file(&socket) {
                log::warn!("shutdown: remove {}: {e}", socket.display());
            }
        }
        exit();
    })
}

/// How long `delete` waits for an exiting shim to stop accepting on its
/// socket.
const SHIM_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

struct SocketError {
    message: String,
    /// Something still accepts connections on it.
    live: bool,
}

fn remove_socket_if_dead(path: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |message: String, live: bool| Err(SocketError { message, live });
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return err(format!("{}: {e}", path.display()), false),
        Ok(m) if !m.file_type().is_socket() => {
            return err(
                format!("{} is not a socket; left in place", path.display()),
                false,
            )
        }
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => err(
            format!(
                "{} still accepts connections; left in place",
                path.display()
            ),
            true,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| SocketError {
                message: format!("remove {}: {e}", path.display()),
                live: false,
            }),
        Err(e) => err(format!("{}: {e}; left in place", path.display()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shutdown_that_does_not_end_exits_within_its_grace_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        exit_after(
            std::time::Duration::from_millis(100),
            socket.clone(),
            move || {
                tx.send(started.elapsed()).unwrap();
            },
        );
        let after = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(after >= std::time::Duration::from_millis(100), "{after:?}");
        assert!(!socket.exists());
        // A socket already gone is no obstacle.
        let (tx, rx) = std::sync::mpsc::channel();
        exit_after(std::time::Duration::ZERO, socket, move || {
            tx.send(()).unwrap()
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        // A file that is not a socket stays.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        exit_after(std::time::Duration::ZERO, file.clone(), move || {
            tx.send(()).unwrap()
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(file.exists());
    }

    #[test]
    fn the_reaper_mount_rootfs_waits_through_stays_on() {
        let c = shim_config();
        assert!(!c.no_reaper && !c.no_sub_reaper);
    }

    fn bundle(annotations: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"annotations": {annotations}}}"#),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_container_joining_a_pod_is_given_the_sandbox_shims_address() {
        let ctrd = "/run/ctrd/containerd.sock";
        let b = bundle(
            r#"{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"}"#,
        );
        let plan = start_plan(b.path(), "c1", ctrd, "k8s.io").unwrap();
        let sandbox_address = containerd_shim::socket_address(ctrd, "k8s.io", "pod1");
        assert_eq!(
            plan,
            StartPlan::Join {
                sid: "pod1".into(),
                address: sandbox_address.clone()
            }
        );
        assert_ne!(
            sandbox_address,
            containerd_shim::socket_address(ctrd, "k8s.io", "c1")
        );
        // CRI-O's spelling joins too.
        let b = bundle(
            r#"{"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "pod1"}"#,
        );
        assert_eq!(
            start_plan(b.path(), "c1", ctrd, "k8s.io").unwrap(),
            StartPlan::Join {
                sid: "pod1".into(),
                address: sandbox_address
            }
        );
    }

    #[test]
    fn a_sandbox_or_a_plain_container_is_spawned_a_shim() {
        let ctrd = "/run/ctrd/containerd.sock";
        let b = bundle(
            r#"{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod1"}"#,
        );
        assert_eq!(
            start_plan(b.path(), "pod1", ctrd, "k8s.io").unwrap(),
            StartPlan::Spawn
        );
        let b = bundle("{}");
        assert_eq!(
            start_plan(b.path(), "c1", ctrd, "default").unwrap(),
            StartPlan::Spawn
        );
        // No config.json (never the case for start): its own sandbox.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            start_plan(empty.path(), "c1", ctrd, "default").unwrap(),
            StartPlan::Spawn
        );
    }

    #[test]
    fn start_refuses_bad_ids_before_naming_anything() {
        let b = bundle(
            r#"{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "../x"}"#,
        );
        assert!(start_plan(b.path(), "c1", "/a", "ns")
            .unwrap_err()
            .contains("is invalid"));
        assert!(start_plan(b.path(), "../c1", "/a", "ns")
            .unwrap_err()
            .contains("container id"));
    }

    #[test]
    fn serving_is_checked_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let address = format!("unix://{}", path.display());
        let e = check_serving(&address).unwrap_err();
        assert!(e.contains("No such file"), "{e}");
        // A listener that never accepts, its backlog full: still serving,
        // and the check returns at once instead of blocking in connect.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        loop {
            // Fill the backlog with non-blocking connects.
            let fd = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                None,
            )
            .unwrap();
            let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
            match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                Ok(()) => held.push(fd),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(held.len() < 10_000, "the backlog never filled");
        }
        // A blocking connect would wait here until the listener accepts,
        // i.e. for ever: the check runs in a thread, given a minute.
        let (tx, rx) = std::sync::mpsc::channel();
        let a = address.clone();
        std::thread::spawn(move || tx.send(check_serving(&a)));
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("check_serving blocked on a full backlog")
            .unwrap();
        drop(held);
        drop(listener);
        // The listener is gone, its socket file left: refused.
        let e = check_serving(&address).unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }

    #[test]
    fn only_a_dead_socket_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(remove_dead_socket(&live)
            .unwrap_err()
            .contains("still accepts"));
        assert!(live.exists());
        drop(listener);
        remove_dead_socket(&live).unwrap();
        assert!(!live.exists());
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(remove_dead_socket(&file)
            .unwrap_err()
            .contains("not a socket"));
        assert!(file.exists());
        remove_dead_socket(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn a_dead_shims_monitor_directory_goes_and_a_live_one_stays() {
        let root = tempfile::tempdir().unwrap();
        let live = monitor::MonitorServer::start(root.path(), "live", Default::default()).unwrap();
        let p = remove_dead_monitor(root.path(), "live").unwrap();
        assert!(p.contains("still accepts"), "{p}");
        assert!(live.socket().exists());
        drop(live);

        std::fs::create_dir(root.path().join("dead")).unwrap();
        let socket = monitor::socket_path(root.path(), "dead");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert_eq!(remove_dead_monitor(root.path(), "dead"), None);
        assert!(!root.path().join("dead").exists());
        // Nothing there: nothing to do.
        assert_eq!(remove_dead_monitor(root.path(), "never"), None);
    }
}
