//! Host side of the Kata Containers rewrite.
//!
//! - [`hypervisor`]: starts and stops the sandbox VM (QEMU q35, initrd or a
//!   DAX rootfs image on an NVDIMM, serial console to a log file, a QMP
//!   socket, the agent's vsock channel) and owns every process, socket and
//!   directory that a VM needs, so that nothing outlives it.
//! - [`agent_client`]: ttrpc client of the guest agent (`grpc.Health`,
//!   `grpc.AgentService`) over hybrid vsock, vhost-vsock or a unix socket,
//!   with per-call timeouts and a "wait until SERVING" loop.
//!
//! - [`config`]: `configuration.toml` (upstream Kata's sections and keys).
//! - [`oci`]: the bundle's OCI spec converted to the agent API and adapted
//!   to the guest.
//! - [`shim`]: containerd's shim v2 task service (`containerd-shim-kata-v2`):
//!   one VM per sandbox, containers run by the guest agent.
//! - [`state_fs`]: removal of what the runtime created under its state
//!   root, never following symlinks or entering mounts.
//!
//! The `kata-runtime` binary (agent-ctl, check, env) and the shim binary are
//! thin layers over these.

pub mod agent_client;
pub mod config;
pub mod hypervisor;
pub mod oci;
pub mod shim;
pub mod state_fs;
