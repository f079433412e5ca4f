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
//! names a sandbox is served by that sandbox's shim (the `start` action
//! groups by that id) and joins its VM.

mod annotations;
mod mounts;
mod runtime_options;
mod sandbox;
mod service;
mod sizing;
mod stats;
pub mod stdio;

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

pub struct KataShim {
    namespace: String,
    /// containerd's address (`-address`): with the namespace and the
    /// sandbox id it names the shim's socket.
    address: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for KataShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // The hypervisor layer waits for its own children (QEMU, virtiofsd,
        // vhost-device-vsock); a SIGCHLD reaper would steal their statuses.
        config.no_reaper = true;
        config.no_sub_reaper = true;
        let debug_env = std::env::var("RUST_LOG")
            .map(|v| v.contains("debug"))
            .unwrap_or(false);
        let debug_conf = crate::config::load().map(|c| c.debug()).unwrap_or(false);
        if debug_env || debug_conf {
            config.default_log_level = "debug".into();
        }
        KataShim {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            bundle: if args.bundle.is_empty() {
                std::env::current_dir().unwrap_or_default()
            } else {
                PathBuf::from(&args.bundle)
            },
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        protocols::ids::check_id("container id (-id)", &opts.id).map_err(invalid)?;
        let grouping = sandbox_id_of_bundle(&self.bundle, &opts.id).map_err(invalid)?;
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
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
            // The dead shim served this sandbox's socket; nothing removes
            // it once the shim was killed.
            let socket = containerd_shim::socket_address(&self.address, &self.namespace, &sid);
            if let Err(p) = remove_dead_socket(Path::new(socket.trim_start_matches("unix://"))) {
                problems.push(p);
            }
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
}
