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

mod mounts;
mod sandbox;
mod service;
mod stats;
pub mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, ExitSignal, Flags, StartOpts};

pub use service::{Service, CRI_CONTAINER_TYPE, CRI_SANDBOX_ID, VM_DIED_STATUS};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.kata.v2";

/// Container / exec ids accepted (they become path components and the VM's
/// id): `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The sandbox a bundle belongs to: its CRI sandbox id for a CRI
/// "container", else the container's own id.
pub fn sandbox_id_of_bundle(bundle: &Path, container_id: &str) -> String {
    let text = std::fs::read_to_string(bundle.join("config.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let ann = &v["annotations"];
    match (ann[CRI_CONTAINER_TYPE].as_str(), ann[CRI_SANDBOX_ID].as_str()) {
        (Some("container"), Some(sid)) if !sid.is_empty() => sid.to_string(),
        _ => container_id.to_string(),
    }
}

pub struct KataShim {
    namespace: String,
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
        let debug_env = std::env::var("RUST_LOG").map(|v| v.contains("debug")).unwrap_or(false);
        let debug_conf = crate::config::load().map(|c| c.debug()).unwrap_or(false);
        if debug_env || debug_conf {
            config.default_log_level = "debug".into();
        }
        KataShim {
            namespace: args.namespace.clone(),
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
        let grouping = sandbox_id_of_bundle(&self.bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// Cleanup after a shim that died: its VM processes, mounts and state.
    fn delete_shim(&mut self) -> Result<api::DeleteResponse, containerd_shim::Error> {
        let state_root = crate::config::load()
            .map(|c| c.runtime.state_root)
            .unwrap_or_else(|_| PathBuf::from(crate::hypervisor::DEFAULT_STATE_ROOT));
        let sid = sandbox_id_of_bundle(&self.bundle, &self.id);
        let problems = cleanup_leftovers(&state_root, &sid, &self.id);
        for p in &problems {
            eprintln!("containerd-shim-kata-v2 delete {}: {p}", self.id);
        }
        let mut r = api::DeleteResponse::new();
        r.exit_status = 128 + libc::SIGKILL as u32;
        r.exited_at = containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::util::timestamp()?,
        );
        let _ = &self.namespace;
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

/// Kill what a dead shim left of sandbox `sid` (QEMU by its pidfile; the
/// daemons exit or are orphaned with their sockets removed), unmount the
/// container's rootfs and remove the state and shared directories.
fn cleanup_leftovers(state_root: &Path, sid: &str, cid: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let state_dir = state_root.join(sid);
    if sid == cid {
        if let Ok(pid) = std::fs::read_to_string(state_dir.join("qemu.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let shared = mounts::shared_dir(state_root, sid);
    let target = if sid == cid { shared.clone() } else { shared.join(cid) };
    problems.extend(mounts::unmount_all_under(&target));
    if let Err(e) = mounts::remove_tree_no_cross(&target) {
        problems.push(format!("remove {}: {e}", target.display()));
    }
    if sid == cid && state_dir.exists() {
        if let Err(e) = mounts::remove_tree_no_cross(&state_dir) {
            problems.push(format!("remove {}: {e}", state_dir.display()));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("c1"));
        assert!(valid_id("a"));
        assert!(valid_id("0123abc_-."));
        assert!(!valid_id(""));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn grouping_follows_cri_annotations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sandbox_id_of_bundle(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox_id_of_bundle(dir.path(), "c1"), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod1"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox_id_of_bundle(dir.path(), "pod1"), "pod1");
    }
}
