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
//! The `kata-runtime` binary is a thin CLI over both; the shim will be
//! another user of the same API.

pub mod agent_client;
pub mod hypervisor;
