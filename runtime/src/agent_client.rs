//! Client of the guest agent: ttrpc (`grpc.Health`, `grpc.AgentService`)
//! over one stream to the agent (hybrid vsock, vhost-vsock or a unix socket).
//!
//! Every call carries a timeout. [`AgentClient::wait_serving`] retries
//! connect + `Check` until the agent reports SERVING: right after boot the
//! guest port does not listen yet, and hybrid vsock then closes the
//! connection or never answers the `CONNECT`, so each attempt is bounded and
//! followed by a fresh connection.

use std::time::{Duration, Instant};

use protocols::agent::{
    AddARPNeighborsRequest, CreateSandboxRequest, DestroySandboxRequest, GuestDetailsRequest,
    GuestDetailsResponse, OnlineCPUMemRequest, ReseedRandomDevRequest, Routes,
    SetGuestDateTimeRequest, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::health_ttrpc::HealthClient;

pub use crate::hypervisor::AgentAddress;
use crate::hypervisor::{Vm, VmError};

/// Default bound of one ttrpc call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of one connection attempt (connect + hybrid vsock handshake).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of the `Check` call of one [`AgentClient::wait_serving`] attempt:
/// a live agent answers in milliseconds even under TCG.
const PROBE_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts of [`AgentClient::wait_serving`]. Half of it, on
/// average, is added to every sandbox start after the agent listens; an
/// attempt before then costs a refused CONNECT (microseconds of host time).
const RETRY_PAUSE: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the agent at {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent call {method} timed out after {after:?} (agent at {address})")]
    CallTimeout {
        method: &'static str,
        after: Duration,
        address: String,
    },
    #[error("agent call {method} failed: {detail} (agent at {address})")]
    Rpc {
        method: &'static str,
        detail: String,
        address: String,
    },
    #[error("timed out after {after:?} waiting for the agent at {address} to report SERVING; last attempt: {last_attempt}{diagnostics}")]
    NotServing {
        address: String,
        after: Duration,
        last_attempt: String,
        diagnostics: String,
    },
    /// The VM died while the client waited for it.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// A connection to the agent with both service clients.
pub struct AgentClient {
    address: AgentAddress,
    health: HealthClient,
    agent: AgentServiceClient,
    call_timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("address", &self.address)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

fn rpc_error(
    method: &'static str,
    after: Duration,
    address: &AgentAddress,
    e: ttrpc::Error,
) -> AgentError {
    let detail = match &e {
        ttrpc::Error::RpcStatus(s) => format!("status {:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    // The sync ttrpc client reports its own deadline as an "Others" error.
    if matches!(&e, ttrpc::Error::Others(m) if m.contains("timeout")) {
        return AgentError::CallTimeout {
            method,
            after,
            address: address.to_string(),
        };
    }
    AgentError::Rpc {
        method,
        detail,
        address: address.to_string(),
    }
}

impl AgentClient {
    /// One connection attempt, bounded by `connect_timeout`; calls are
    /// bounded by `call_timeout` each.
    pub fn connect(
        address: &AgentAddress,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Self, AgentError> {
        let fd = address
            .connect(connect_timeout)
            .map_err(|source| AgentError::Connect {
                address: address.to_string(),
                source,
            })?;
        let client = ttrpc::Client::new(std::os::fd::IntoRawFd::into_raw_fd(fd)).map_err(|e| {
            AgentError::Connect {
                address: address.to_string(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        Ok(AgentClient {
            address: address.clone(),
            health: HealthClient::new(client.clone()),
            agent: AgentServiceClient::new(client),
            call_timeout,
        })
    }

    /// Connect and `Check` until the agent reports SERVING, for at most
    /// `timeout`. `alive` is called before every attempt and aborts the wait
    /// with its error (e.g. [`Vm::check_alive`]: QEMU died).
    pub fn wait_serving(
        address: &AgentAddress,
        timeout: Duration,
        call_timeout: Duration,
        mut alive: impl FnMut() -> Result<(), VmError>,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut last_attempt = String::from("none (no attempt finished)");
        loop {
            alive()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::NotServing {
                    address: address.to_string(),
                    after: timeout,
                    last_attempt,
                    diagnostics: String::new(),
                });
            }
            let budget = (deadline - now).min(DEFAULT_CONNECT_TIMEOUT);
            match AgentClient::connect(address, budget, call_timeout) {
                Ok(client) => match client.check_with_timeout(
                    PROBE_CALL_TIMEOUT.min(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(100)),
                    ),
                ) {
                    Ok(reply) if reply.status.enum_value() == Ok(ServingStatus::SERVING) => {
                        return Ok(client)
                    }
                    Ok(reply) => {
                        last_attempt =
                            format!("agent answered Check with status {:?}", reply.status)
                    }
                    Err(e) => last_attempt = crate::error_chain(&e),
                },
                Err(e) => last_attempt = crate::error_chain(&e),
            }
            log::debug!("agent not serving yet: {last_attempt}");
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(pause);
        }
    }

    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// A ttrpc context carrying the call timeout, for direct use of
    /// [`AgentClient::health`] / [`AgentClient::agent`].
    pub fn context(&self) -> ttrpc::context::Context {
        ttrpc::context::with_duration(self.call_timeout)
    }

    /// The generated `grpc.Health` client (for calls not wrapped here).
    pub fn health(&self) -> &HealthClient {
        &self.health
    }

    /// The generated `grpc.AgentService` client (for calls not wrapped here).
    pub fn agent(&self) -> &AgentServiceClient {
        &self.agent
    }

    fn check_with_timeout(&self, timeout: Duration) -> Result<HealthCheckResponse, AgentError> {
        self.health
            .check(ttrpc::context::with_duration(timeout), &CheckRequest::new())
            .map_err(|e| rpc_error("Check", timeout, &self.address, e))
    }

    pub fn check(&self) -> Result<HealthCheckResponse, AgentError> {
        self.check_with_timeout(self.call_timeout)
    }

    pub fn version(&self) -> Result<VersionCheckResponse, AgentError> {
        self.health
            .version(self.context(), &CheckRequest::new())
            .map_err(|e| self.err("Version", e))
    }

    pub fn get_guest_details(
        &self,
        req: &GuestDetailsRequest,
    ) -> Result<GuestDetailsResponse, AgentError> {
        self.agent
            .get_guest_details(self.context(), req)
            .map_err(|e| self.err("GetGuestDetails", e))
    }

    pub fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<(), AgentError> {
        self.agent
            .create_sandbox(self.context(), req)
            .map(drop)
            .map_err(|e| self.err("CreateSandbox", e))
    }

    /// The agent's and the guest's figures, Prometheus text.
    pub fn get_metrics(&self) -> Result<String, AgentError> {
        self.agent
            .get_metrics(self.context(), &protocols::agent::GetMetricsRequest::new())
            .map(|m| m.metrics)
            .map_err(|e| self.err("GetMetrics", e))
    }

    /// Usage of the filesystem mounted at `guest_path` (`GetVolumeStats`).
    pub fn get_volume_stats(
        &self,
        guest_path: &str,
    ) -> Result<protocols::agent::VolumeStatsResponse, AgentError> {
        let mut req = protocols::agent::VolumeStatsRequest::new();
        req.volume_guest_path = guest_path.into();
        self.agent
            .get_volume_stats(self.context(), &req)
            .map_err(|e| self.err("GetVolumeStats", e))
    }

    /// Grows the filesystem at `guest_path` to a device of `size` bytes
    /// (`ResizeVolume`); the device must have grown first.
    pub fn resize_volume(&self, guest_path: &str, size: u64) -> Result<(), AgentError> {
        let mut req = protocols::agent::ResizeVolumeRequest::new();
        req.volume_guest_path = guest_path.into();
        req.size = size;
        self.agent
            .resize_volume(self.context(), &req)
            .map(drop)
            .map_err(|e| self.err("ResizeVolume", e))
    }

    /// The guest's rules as iptables-save (`is_ipv6`: ip6tables-save)
    /// prints them (`GetIPTables`).
    pub fn get_ip_tables(&self, is_ipv6: bool) -> Result<Vec<u8>, AgentError> {
        let mut req = protocols::agent::GetIPTablesRequest::new();
        req.is_ipv6 = is_ipv6;
        self.agent
            .get_ip_tables(self.context(), &req)
            .map(|r| r.data)
            .map_err(|e| self.err("GetIPTables", e))
    }

    /// Replaces the tables `rules` name, through iptables-restore in the
    /// guest (`SetIPTables`); returns what it printed.
    pub fn set_ip_tables(&self, is_ipv6: bool, rules: &[u8]) -> Result<Vec<u8>, AgentError> {
        let mut req = protocols::agent::SetIPTablesRequest::new();
        req.is_ipv6 = is_ipv6;
        req.data = rules.to_vec();
        self.agent
            .set_ip_tables(self.context(), &req)
            .map(|r| r.data)
            .map_err(|e| self.err("SetIPTables", e))
    }

    pub fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.agent
            .destroy_sandbox(self.context(), &DestroySandboxRequest::new())
            .map(drop)
            .map_err(|e| self.err("DestroySandbox", e))
    }

    pub fn online_cpu_mem(&self, req: &OnlineCPUMemRequest) -> Result<(), AgentError> {
        self.agent
            .online_cpu_mem(self.context(), req)
            .map(drop)
            .map_err(|e| self.err("OnlineCPUMem", e))
    }

    pub fn set_guest_date_time(&self, req: &SetGuestDateTimeRequest) -> Result<(), AgentError> {
        self.agent
            .set_guest_date_time(self.context(), req)
            .map(drop)
            .map_err(|e| self.err("SetGuestDateTime", e))
    }

    pub fn reseed_random_dev(&self, req: &ReseedRandomDevRequest) -> Result<(), AgentError> {
        self.agent
            .reseed_random_dev(self.context(), req)
            .map(drop)
            .map_err(|e| self.err("ReseedRandomDev", e))
    }

    pub fn update_interface(
        &self,
        req: &UpdateInterfaceRequest,
    ) -> Result<protocols::types::Interface, AgentError> {
        self.agent
            .update_interface(self.context(), req)
            .map_err(|e| self.err("UpdateInterface", e))
    }

    pub fn update_routes(&self, req: &UpdateRoutesRequest) -> Result<Routes, AgentError> {
        self.agent
            .update_routes(self.context(), req)
            .map_err(|e| self.err("UpdateRoutes", e))
    }

    pub fn add_arp_neighbors(&self, req: &AddARPNeighborsRequest) -> Result<(), AgentError> {
        self.agent
            .add_arp_neighbors(self.context(), req)
            .map(drop)
            .map_err(|e| self.err("AddARPNeighbors", e))
    }

    fn err(&self, method: &'static str, e: ttrpc::Error) -> AgentError {
        rpc_error(method, self.call_timeout, &self.address, e)
    }
}

/// Wait until the agent of `vm` serves, failing fast if QEMU dies. Returns
/// the client and the time from QEMU's start to the first SERVING reply.
/// Errors carry the console tail of the VM.
pub fn wait_for_agent(
    vm: &mut Vm,
    timeout: Duration,
    call_timeout: Duration,
) -> Result<(AgentClient, Duration), AgentError> {
    let address = vm.agent_address().ok_or_else(|| {
        AgentError::Vm(VmError::Config {
            field: "vsock",
            message: "the VM has no agent channel (VsockBackend::None)".into(),
        })
    })?;
    let result = AgentClient::wait_serving(&address, timeout, call_timeout, || vm.check_alive());
    match result {
        Ok(client) => Ok((client, vm.started_at().elapsed())),
        Err(AgentError::NotServing {
            address,
            after,
            last_attempt,
            ..
        }) => {
            // Reuse the VM's own diagnostics (console and QEMU stderr tails).
            let diagnostics = match vm.timeout_error("", after) {
                VmError::Timeout {
                    console_log,
                    console_tail,
                    stderr_tail,
                    ..
                } => {
                    let mut d = String::new();
                    if !stderr_tail.trim().is_empty() {
                        d.push_str(&format!(
                            "\n--- QEMU stderr (last lines) ---\n{}",
                            stderr_tail.trim_end()
                        ));
                    }
                    if let Some(log) = console_log {
                        d.push_str(&format!(
                            "\n--- console log {} (last lines) ---\n{}",
                            log.display(),
                            console_tail.trim_end()
                        ));
                    }
                    d
                }
                _ => String::new(),
            };
            Err(AgentError::NotServing {
                address,
                after,
                last_attempt,
                diagnostics,
            })
        }
        Err(e) => Err(e),
    }
}
