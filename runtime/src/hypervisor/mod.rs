//! The hypervisor layer shared by tests, `cargo xtask test vm` and the shim
//! (`containerd-shim-kata-v2`): one QEMU process per sandbox, described by a [`QemuConfig`] and
//! owned by a [`Vm`].
//!
//! The flow is `Vm::start(config)` -> talk to the agent at
//! [`Vm::agent_address`] -> [`Vm::wait_exit`] (guest powered off) or
//! [`Vm::shutdown`]. Dropping a [`Vm`] tears everything down as well: QEMU
//! (QMP `quit`, then SIGKILL after a bound), the vsock daemon, the sockets and
//! the per-VM state directory.

mod accel;

/// The exit status of a VM process that another waiter reaped first (a
/// shim's child reaper): it is gone, and its status went with it.
pub(crate) const REAPED_ELSEWHERE: &str = "status unknown: reaped before the runtime read it";

pub mod cid;
mod daemon;
mod error;
pub mod hotplug;
pub mod identity;
mod process;
mod qemu;
pub mod qmp;
pub mod template;
pub mod verity;
pub mod virtiofs;
pub mod vsock;

pub use accel::{
    probe_boot, probe_kvm, probe_kvm_cached, resolve_accel, store_probe, Accel, KvmProbe, ProbeKey,
    KVM_PROBE_TIMEOUT, PROBE_CACHE_FILE,
};
pub use error::VmError;
pub use qemu::{
    build_kernel_cmdline, build_qemu_args, check_sandbox_option, BootMedia, ImageFs, LaunchPlan,
    NetDevice, QemuConfig, Vm, VsockBackend, DEFAULT_STATE_ROOT, QBOOT_FIRMWARE,
    QEMU_IDENTITY_FILE, VM_PROCESSES,
};
pub use qmp::{QmpClient, QmpError, QmpStatus};
pub use virtiofs::{
    SharedFs, VirtioFsCache, VirtioFsDaemon, DEFAULT_SHARED_FS_TAG, DEFAULT_VIRTIOFSD,
};
pub use vsock::{find_vsock_daemon, AgentAddress, HybridVsockDaemon, AGENT_VSOCK_PORT};
