//! One sandbox: its VM (QEMU + virtiofsd + vsock daemon), the agent
//! connection for control calls, and the shared directory on the host.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use protocols::agent::{CreateSandboxRequest, Storage};

use super::mounts;
use crate::agent_client::{wait_for_agent, AgentAddress, AgentClient};
use crate::config::KataConfig;
use crate::hypervisor::{Vm, DEFAULT_SHARED_FS_TAG};
use crate::oci::GUEST_SHARED_DIR;

pub struct Sandbox {
    pub id: String,
    /// The host directory shared with the guest (virtiofsd's source).
    pub shared_dir: PathBuf,
    pub agent: AgentClient,
    pub address: AgentAddress,
    pub call_timeout: Duration,
    /// QEMU's pid (reported as the task pid, as upstream's shim does).
    pub vm_pid: u32,
    pub vm: Mutex<Option<Vm>>,
}

impl Sandbox {
    /// Start the VM of sandbox `id` and create the sandbox in the agent.
    pub fn start(cfg: &KataConfig, id: &str, hostname: &str) -> anyhow::Result<Sandbox> {
        let shared_dir = mounts::shared_dir(&cfg.runtime.state_root, id);
        if shared_dir.exists() {
            // A previous shim of the same id died: its mounts must not leak
            // into this sandbox.
            let problems = mounts::unmount_all_under(&shared_dir);
            if !problems.is_empty() {
                anyhow::bail!("stale {}: {}", shared_dir.display(), problems.join("; "));
            }
            mounts::remove_tree_no_cross(&shared_dir)
                .map_err(|e| anyhow::anyhow!("remove stale {}: {e}", shared_dir.display()))?;
        }
        std::fs::create_dir_all(&shared_dir)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", shared_dir.display()))?;
        // virtiofsd serves this dir from a mount namespace of its own, copied
        // when it starts; container rootfs are mounted here later. Only a
        // shared mount propagates those into its copy (the host's /run may
        // be private, as it is inside containers), so make it one.
        if let Err(e) = mounts::make_shared_mountpoint(&shared_dir) {
            let _ = mounts::remove_tree_no_cross(&shared_dir);
            return Err(e);
        }
        let result = Self::start_vm(cfg, id, hostname, &shared_dir);
        if result.is_err() {
            let _ = mounts::remove_tree_no_cross(&shared_dir);
        }
        result
    }

    fn start_vm(
        cfg: &KataConfig,
        id: &str,
        hostname: &str,
        shared_dir: &Path,
    ) -> anyhow::Result<Sandbox> {
        let qemu = cfg.qemu_config(id, shared_dir);
        log::info!(
            "sandbox {id}: starting VM (kernel {}, {:?}, {} MiB, {} vCPU, shared dir {})",
            qemu.kernel.display(),
            qemu.boot,
            qemu.memory_mib,
            qemu.vcpus,
            shared_dir.display()
        );
        let mut vm = Vm::start(qemu).map_err(|e| anyhow::anyhow!("sandbox {id}: VM: {}", crate::error_chain(&e)))?;
        log::debug!("sandbox {id}: QEMU command line: {:?}", vm.command_line());
        let call_timeout = cfg.request_timeout();
        let (agent, boot_time) = wait_for_agent(&mut vm, cfg.dial_timeout(), call_timeout)
            .map_err(|e| anyhow::anyhow!("sandbox {id}: agent did not come up: {}", crate::error_chain(&e)))?;
        log::info!(
            "sandbox {id}: agent serving {:?} after QEMU start (accel {})",
            boot_time,
            vm.accel().qemu_name()
        );
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.to_string();
        req.hostname = hostname.to_string();
        let mut storage = Storage::new();
        storage.driver = "virtio-fs".into();
        storage.source = DEFAULT_SHARED_FS_TAG.into();
        storage.fstype = "virtiofs".into();
        storage.mount_point = GUEST_SHARED_DIR.into();
        req.storages.push(storage);
        agent
            .create_sandbox(&req)
            .map_err(|e| anyhow::anyhow!("sandbox {id}: CreateSandbox: {}", crate::error_chain(&e)))?;
        let address = agent.address().clone();
        Ok(Sandbox {
            id: id.to_string(),
            shared_dir: shared_dir.to_owned(),
            address,
            call_timeout,
            vm_pid: vm.pid().unwrap_or(0),
            agent,
            vm: Mutex::new(Some(vm)),
        })
    }

    /// Whether the VM still runs; `Err` carries why it does not.
    pub fn check_alive(&self) -> Result<(), String> {
        let mut vm = self.vm.lock().unwrap_or_else(|e| e.into_inner());
        match vm.as_mut() {
            None => Err("the VM was shut down".into()),
            Some(v) => v.check_alive().map_err(|e| crate::error_chain(&e)),
        }
    }

    /// Stop the VM and its daemons (idempotent). `graceful`: ask the agent
    /// to destroy the sandbox first.
    pub fn stop_vm(&self, graceful: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if graceful {
            if let Err(e) = self.agent.destroy_sandbox() {
                log::warn!("sandbox {}: DestroySandbox: {e}", self.id);
            }
        }
        let vm = self.vm.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(vm) = vm {
            if let Err(e) = vm.shutdown() {
                problems.push(crate::error_chain(&e));
            }
        }
        problems
    }

    /// Everything on the host: the VM, then mounts and the shared directory.
    pub fn destroy(&self, graceful: bool) -> Vec<String> {
        let mut problems = self.stop_vm(graceful);
        problems.extend(mounts::unmount_all_under(&self.shared_dir));
        if let Err(e) = mounts::remove_tree_no_cross(&self.shared_dir) {
            problems.push(format!("remove {}: {e}", self.shared_dir.display()));
        }
        // The parent `shared/sandboxes` stays only while other sandboxes use it.
        if let Some(parent) = self.shared_dir.parent() {
            let _ = std::fs::remove_dir(parent);
            if let Some(p) = parent.parent() {
                let _ = std::fs::remove_dir(p);
            }
        }
        problems
    }
}
