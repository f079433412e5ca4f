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
//! - [`network`]: the pod's veths mirrored to taps for the guest's
//!   virtio-net NICs (`internetworking_model = "tcfilter"`).
//! - [`shim`]: containerd's shim v2 task service (`containerd-shim-kata-v2`):
//!   one VM per sandbox, containers run by the guest agent.
//! - [`factory`]: the VM template sandboxes can start from (`[factory]`,
//!   `kata-runtime factory`).
//! - [`state_fs`]: removal of what the runtime created under its state
//!   root, never following symlinks or entering mounts.
//! - [`kata_monitor`]: every sandbox's monitor socket behind one HTTP
//!   endpoint (`kata-monitor`).
//!
//! The `kata-runtime` binary (agent-ctl, check, env, metrics), the shim
//! binary and `kata-monitor` are thin layers over these.

pub mod agent_client;
pub mod config;
pub mod direct_volume;
pub mod env_info;
pub mod factory;
pub mod hypervisor;
pub mod kata_monitor;
pub mod network;
pub mod oci;
pub mod shim;
pub mod state_fs;

/// The error and its causes on one line (`outer: cause: root cause`), as
/// anyhow's `{:#}` prints them. The crate's error types keep their cause in
/// `source()` rather than in their message, so printing one with `{}` alone
/// would drop it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_prints_each_cause_once() {
        let e = crate::agent_client::AgentError::Connect {
            address: "unix:///x.sock".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such socket"),
        };
        assert_eq!(
            super::error_chain(&e),
            "cannot connect to the agent at unix:///x.sock: no such socket"
        );
    }
}
