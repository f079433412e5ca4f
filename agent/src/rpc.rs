//! The ttrpc services: grpc.Health and grpc.AgentService.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use protocols::agent::{
    AgentDetails, CreateSandboxRequest, DestroySandboxRequest, GuestDetailsRequest,
    GuestDetailsResponse, OnlineCPUMemRequest, SetGuestDateTimeRequest,
};
use protocols::empty::Empty;
use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::{agent, agent_ttrpc, health_ttrpc};
use ttrpc::{Code, MethodHandler, TtrpcContext};

use crate::config::Config;
use crate::container::{Containers, Failure, Layout};
use crate::guest;
use crate::iptables;
use crate::kmod;
use crate::network;
use crate::reaper::Reaper;
use crate::storage::{self, Prepared};

/// The agent's version, reported by Health.Version and GetGuestDetails.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The API version string upstream agents report as `grpc_version`.
pub const API_VERSION: &str = "0.0.1";

/// Why the agent stops serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shutdown {
    SandboxDestroyed,
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// User and group names to resolve in the container's /etc/passwd are not
/// supported: the numeric OCI.Process.User is what the agent applies.
fn refuse_string_user(
    method: &str,
    user: &protobuf::MessageField<agent::StringUser>,
) -> ttrpc::Result<()> {
    match user.as_ref() {
        Some(u) if !u.uid.is_empty() || !u.gid.is_empty() || !u.additionalGids.is_empty() => {
            Err(status(
                Code::UNIMPLEMENTED,
                format!("{method}: string_user (user names resolved in the container) is not implemented by this agent yet; send numeric ids in Process.User"),
            ))
        }
        _ => Ok(()),
    }
}

/// A container failure as the reply status, naming the method.
fn reply<T>(method: &str, result: Result<T, Failure>) -> ttrpc::Result<T> {
    result.map_err(|f| {
        if f.code != Code::NOT_FOUND {
            log::warn!("{method}: {}", f.message);
        }
        status(f.code, format!("{method}: {}", f.message))
    })
}

/// The sandbox the runtime created (one per agent).
#[derive(Debug, Default)]
struct Sandbox {
    id: String,
    hostname: String,
    storages: Vec<Prepared>,
}

pub struct AgentState {
    config: Arc<Config>,
    sandbox: Mutex<Option<Sandbox>>,
    shutdown: Mutex<Sender<Shutdown>>,
    containers: Containers,
    /// Runs the iptables tools (the reaper owns every child's status).
    reaper: Reaper,
}

impl AgentState {
    pub fn new(config: Arc<Config>, shutdown: Sender<Shutdown>, reaper: Reaper) -> Arc<AgentState> {
        let layout = Layout {
            run_dir: config.run_dir.clone(),
        };
        Arc::new(AgentState {
            config,
            sandbox: Mutex::new(None),
            shutdown: Mutex::new(shutdown),
            containers: Containers::new(layout, reaper.clone()),
            reaper,
        })
    }

    fn apply_hostname(&self, hostname: &str) -> std::io::Result<()> {
        if let Some(path) = &self.config.hostname_file {
            write_atomically(path, format!("{hostname}\n").as_bytes())
        } else if self.config.owns_guest {
            nix::unistd::sethostname(hostname).map_err(std::io::Error::from)
        } else {
            log::info!("service mode: hostname {hostname:?} recorded, host hostname left alone");
            Ok(())
        }
    }

    fn apply_dns(&self, dns: &[String]) -> std::io::Result<()> {
        let mut text = String::new();
        for line in dns {
            // upstream runtimes send whole resolv.conf lines ("nameserver 10.0.0.1",
            // "search x", "options ndots:5")
            text.push_str(line.trim());
            text.push('\n');
        }
        if let Some(path) = &self.config.resolv_conf {
            return write_atomically(path, text.as_bytes());
        }
        if !self.config.owns_guest {
            log::info!("service mode: {} DNS line(s) not written (set KATA_AGENT_RESOLV_CONF to write them)", dns.len());
            return Ok(());
        }
        // The guest rootfs is read-only (ro, DAX image): the file lives on
        // /run and is bind-mounted over /etc/resolv.conf, as upstream does.
        let run_copy = Path::new(GUEST_DNS_RUN_FILE);
        write_atomically(run_copy, text.as_bytes())?;
        let target = Path::new(GUEST_DNS_FILE);
        if !target.exists() {
            fs::File::create(target).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{GUEST_DNS_FILE} is missing and cannot be created ({e}); the rootfs must provide it"))
            })?;
        }
        nix::mount::mount(
            Some(run_copy),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            std::io::Error::other(format!(
                "bind {} over {GUEST_DNS_FILE}: {e}",
                run_copy.display()
            ))
        })
    }
}

/// The guest's resolver configuration and where its content really lives.
const GUEST_DNS_FILE: &str = "/etc/resolv.conf";
const GUEST_DNS_RUN_FILE: &str = "/run/kata-containers/sandbox/resolv.conf";

/// Writes to a temporary file beside `path` and renames it into place: the
/// agent's one atomic write (containers' files use it too).
///
/// The host crates share `host_support::fs::write_atomic`; the agent keeps
/// these few lines of its own on purpose: it is one static musl binary in
/// every guest image (size matters, see `[profile.agent]`), and host-support
/// would link tempfile, walkdir, which and time into the guest for nothing.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

pub struct HealthService;

impl health_ttrpc::Health for HealthService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        let mut resp = HealthCheckResponse::new();
        resp.status = ServingStatus::SERVING.into();
        Ok(resp)
    }

    fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        let mut resp = VersionCheckResponse::new();
        resp.grpc_version = API_VERSION.into();
        resp.agent_version = AGENT_VERSION.into();
        Ok(resp)
    }
}

pub struct AgentService {
    pub state: Arc<AgentState>,
}

impl agent_ttrpc::AgentService for AgentService {
    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        if !req.shared_mounts.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "CreateContainer: shared_mounts are not implemented by this agent yet",
            ));
        }
        refuse_string_user("CreateContainer", &req.string_user)?;
        let sandbox_storages: Vec<std::path::PathBuf> = self
            .state
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| {
                s.storages
                    .iter()
                    .map(|p| match p {
                        Prepared::Mounted(p) | Prepared::Directory(p) => p.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        reply(
            "CreateContainer",
            self.state.containers.create(&req, &sandbox_storages),
        )?;
        Ok(Empty::new())
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "StartContainer",
            self.state.containers.start(&req.container_id),
        )?;
        Ok(Empty::new())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let timeout = std::time::Duration::from_secs(req.timeout.into());
        reply(
            "RemoveContainer",
            self.state.containers.remove(&req.container_id, timeout),
        )?;
        Ok(Empty::new())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        refuse_string_user("ExecProcess", &req.string_user)?;
        reply("ExecProcess", self.state.containers.exec(&req))?;
        Ok(Empty::new())
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "SignalProcess",
            self.state
                .containers
                .signal(&req.container_id, &req.exec_id, req.signal),
        )?;
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        let code = reply(
            "WaitProcess",
            self.state.containers.wait(&req.container_id, &req.exec_id),
        )?;
        let mut resp = agent::WaitProcessResponse::new();
        resp.status = code;
        Ok(resp)
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> ttrpc::Result<agent::StatsContainerResponse> {
        let stats = reply(
            "StatsContainer",
            self.state.containers.stats(&req.container_id),
        )?;
        let mut resp = agent::StatsContainerResponse::new();
        resp.cgroup_stats = Some(stats).into();
        Ok(resp)
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "PauseContainer",
            self.state.containers.pause(&req.container_id),
        )?;
        Ok(Empty::new())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "ResumeContainer",
            self.state.containers.resume(&req.container_id),
        )?;
        Ok(Empty::new())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let Some(resources) = req.resources.as_ref() else {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "UpdateContainer: resources (field 2) is missing",
            ));
        };
        reply(
            "UpdateContainer",
            self.state.containers.update(&req.container_id, resources),
        )?;
        Ok(Empty::new())
    }

    /// The agent's and the guest's figures (see [`crate::metrics`]).
    fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::GetMetricsRequest,
    ) -> ttrpc::Result<agent::Metrics> {
        let mut m = agent::Metrics::new();
        m.metrics = crate::metrics::gather();
        Ok(m)
    }

    /// Usage of a volume mounted below the run directory (see
    /// [`crate::volume`]).
    fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        req: agent::VolumeStatsRequest,
    ) -> ttrpc::Result<agent::VolumeStatsResponse> {
        reply(
            "GetVolumeStats",
            crate::volume::stats(&req.volume_guest_path, &self.state.config.run_dir),
        )
    }

    /// Grows a volume's ext4 after the host grew its disk (upstream's agent
    /// answers UNIMPLEMENTED here).
    fn resize_volume(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResizeVolumeRequest,
    ) -> ttrpc::Result<Empty> {
        let config = &self.state.config;
        reply(
            "ResizeVolume",
            crate::volume::resize(
                &req.volume_guest_path,
                req.size,
                &config.run_dir,
                &config.sysfs_root,
            ),
        )?;
        Ok(Empty::new())
    }

    /// The guest's rules as iptables-save prints them (see
    /// [`crate::iptables`]). Allowed in service mode too: it only reads,
    /// like ListRoutes.
    fn get_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetIPTablesRequest,
    ) -> ttrpc::Result<agent::GetIPTablesResponse> {
        let family = iptables::Family::of(req.is_ipv6);
        let mut resp = agent::GetIPTablesResponse::new();
        resp.data = reply(
            "GetIPTables",
            iptables::Tools::guest().save(&self.state.reaper, family),
        )?;
        Ok(resp)
    }

    /// Replaces the tables `data` names through iptables-restore.
    fn set_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetIPTablesRequest,
    ) -> ttrpc::Result<agent::SetIPTablesResponse> {
        // bad input is refused as such, whatever the mode
        reply("SetIPTables", iptables::check_rules(&req.data))?;
        self.refuse_network_change_in_service_mode("SetIPTables")?;
        let family = iptables::Family::of(req.is_ipv6);
        let mut resp = agent::SetIPTablesResponse::new();
        resp.data = reply(
            "SetIPTables",
            iptables::Tools::guest().restore(&self.state.reaper, family, &req.data),
        )?;
        Ok(resp)
    }

    /// Blocks until a container's cgroup records an OOM kill (see
    /// [`crate::oom`]); ends with the sandbox, the caller's connection, or
    /// the request's deadline.
    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _req: agent::GetOOMEventRequest,
    ) -> ttrpc::Result<agent::OOMEvent> {
        use crate::oom::NoEvent;
        let deadline = (ctx.timeout_nano > 0).then(|| {
            std::time::Instant::now() + std::time::Duration::from_nanos(ctx.timeout_nano as u64)
        });
        // the server drops its end when the client's connection closes
        let cancel = ctx.cancel_rx.clone();
        let gone = move || cancel.try_recv().is_err_and(|e| e.is_disconnected());
        match self.state.containers.oom.next(deadline, gone) {
            Ok(id) => {
                let mut event = agent::OOMEvent::new();
                event.container_id = id;
                Ok(event)
            }
            Err(NoEvent::Closed) => Err(status(
                Code::UNAVAILABLE,
                "GetOOMEvent: the sandbox is being destroyed",
            )),
            Err(NoEvent::Cancelled) => {
                Err(status(Code::CANCELLED, "GetOOMEvent: the caller went away"))
            }
            Err(NoEvent::DeadlineExceeded) => Err(status(
                Code::DEADLINE_EXCEEDED,
                "GetOOMEvent: no OOM kill before the request's deadline",
            )),
            Err(NoEvent::Unavailable) => Err(status(
                Code::UNAVAILABLE,
                "GetOOMEvent: inotify is unavailable in this guest, OOM kills cannot be watched",
            )),
        }
    }

    fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> ttrpc::Result<agent::WriteStreamResponse> {
        let len = reply(
            "WriteStdin",
            self.state
                .containers
                .write_stdin(&req.container_id, &req.exec_id, &req.data),
        )?;
        let mut resp = agent::WriteStreamResponse::new();
        resp.len = len;
        Ok(resp)
    }

    fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let data = reply(
            "ReadStdout",
            self.state
                .containers
                .read_stdout(&req.container_id, &req.exec_id, req.len),
        )?;
        let mut resp = agent::ReadStreamResponse::new();
        resp.data = data;
        Ok(resp)
    }

    fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let data = reply(
            "ReadStderr",
            self.state
                .containers
                .read_stderr(&req.container_id, &req.exec_id, req.len),
        )?;
        let mut resp = agent::ReadStreamResponse::new();
        resp.data = data;
        Ok(resp)
    }

    fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "CloseStdin",
            self.state
                .containers
                .close_stdin(&req.container_id, &req.exec_id),
        )?;
        Ok(Empty::new())
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "TtyWinResize",
            self.state
                .containers
                .resize_tty(&req.container_id, &req.exec_id, req.row, req.column),
        )?;
        Ok(Empty::new())
    }

    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let config = &self.state.config;
        let mut resp = GuestDetailsResponse::new();
        if req.mem_block_size {
            resp.mem_block_size_bytes = guest::memory_block_size(&config.sysfs_root)
                .map_err(|e| {
                    status(
                        Code::INTERNAL,
                        format!("GetGuestDetails: memory block size: {e}"),
                    )
                })?
                .unwrap_or(0);
        }
        if req.mem_hotplug_probe {
            resp.support_mem_hotplug_probe = guest::memory_hotplug_probe(&config.sysfs_root);
        }
        let mut details = AgentDetails::new();
        details.version = AGENT_VERSION.into();
        details.init_daemon = config.init_mode;
        details.storage_handlers = storage::SUPPORTED_DRIVERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        // the container's linux.seccomp profile is enforced (crate::seccomp)
        details.supports_seccomp = true;
        resp.agent_details = Some(details).into();
        resp.kernel_release = guest::kernel_release();
        Ok(resp)
    }

    fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let mut sandbox = self.state.sandbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = sandbox.as_ref() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!(
                    "CreateSandbox: sandbox {:?} already exists in this guest",
                    existing.id
                ),
            ));
        }
        if !req.hostname.is_empty() && !valid_hostname(&req.hostname) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!(
                    "CreateSandbox: hostname {:?} is not a valid hostname",
                    req.hostname
                ),
            ));
        }
        if !req.kernel_modules.is_empty() {
            self.load_kernel_modules(&req.kernel_modules)?;
        }
        if !req.hostname.is_empty() {
            self.state.apply_hostname(&req.hostname).map_err(|e| {
                status(
                    Code::INTERNAL,
                    format!("CreateSandbox: set hostname {:?}: {e}", req.hostname),
                )
            })?;
        }
        if !req.dns.is_empty() {
            self.state.apply_dns(&req.dns).map_err(|e| {
                status(
                    Code::INTERNAL,
                    format!("CreateSandbox: write DNS configuration: {e}"),
                )
            })?;
        }
        let mut prepared = Vec::new();
        for s in req.storages.iter() {
            match storage::prepare(s, &self.state.config.run_dir) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    // leave the guest as it was: undo what this call mounted
                    prepared.iter().rev().for_each(storage::release);
                    let code = match e {
                        storage::StorageError::Unsupported { .. } => Code::UNIMPLEMENTED,
                        storage::StorageError::Invalid { .. } => Code::INVALID_ARGUMENT,
                        storage::StorageError::Failed { .. } => Code::INTERNAL,
                    };
                    return Err(status(code, format!("CreateSandbox: {e}")));
                }
            }
        }
        log::info!(
            "sandbox {:?} created (hostname {:?}, {} storage(s), shared PID namespace {})",
            req.sandbox_id,
            req.hostname,
            prepared.len(),
            req.sandbox_pidns
        );
        self.state
            .containers
            .sandbox_pidns
            .store(req.sandbox_pidns, std::sync::atomic::Ordering::Relaxed);
        *sandbox = Some(Sandbox {
            id: req.sandbox_id,
            hostname: req.hostname,
            storages: prepared,
        });
        Ok(Empty::new())
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let sandbox = self
            .state
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match sandbox {
            Some(sandbox) => {
                sandbox.storages.iter().rev().for_each(storage::release);
                log::info!(
                    "sandbox {:?} (hostname {:?}) destroyed",
                    sandbox.id,
                    sandbox.hostname
                );
            }
            None => log::info!("DestroySandbox without a sandbox: shutting down anyway"),
        }
        // A GetOOMEvent waiting on another connection ends now, not with
        // the VM.
        self.state.containers.oom.close();
        // The reply is queued when this returns; main waits a moment for it
        // to be written before it stops the server.
        let _ = self
            .state
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Shutdown::SandboxDestroyed);
        Ok(Empty::new())
    }

    fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        let sysfs = self.state.config.sysfs_root.clone();
        let work = move || -> std::io::Result<(u32, u32)> {
            let cpus = guest::online_cpus(&sysfs, req.nb_cpus)?;
            let memory = if req.cpu_only {
                0
            } else {
                guest::online_memory(&sysfs)?
            };
            Ok((cpus, memory))
        };
        if req.wait {
            let (cpus, memory) =
                work().map_err(|e| status(Code::INTERNAL, format!("OnlineCPUMem: {e}")))?;
            log::info!("onlined {cpus} CPU(s) and {memory} memory block(s)");
        } else {
            std::thread::spawn(move || match work() {
                Ok((cpus, memory)) => {
                    log::info!("onlined {cpus} CPU(s) and {memory} memory block(s)")
                }
                Err(e) => log::error!("OnlineCPUMem: {e}"),
            });
        }
        Ok(Empty::new())
    }

    fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        let time = guest::datetime_from_request(req.Sec, req.Usec)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("SetGuestDateTime: {e}")))?;
        if !self.state.config.owns_guest {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "SetGuestDateTime: the agent runs in service mode (not PID 1 of a VM) and does not set the host's clock",
            ));
        }
        guest::set_clock(time).map_err(|e| {
            status(
                Code::INTERNAL,
                format!("SetGuestDateTime: clock_settime: {e}"),
            )
        })?;
        Ok(Empty::new())
    }

    fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        if req.data.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "ReseedRandomDev: data is empty; send the bytes to mix into the guest's pool",
            ));
        }
        if !self.state.config.owns_guest {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "ReseedRandomDev: the agent runs in service mode (not PID 1 of a VM) and does not reseed the host's generator",
            ));
        }
        guest::reseed_random(&req.data)
            .map_err(|e| status(Code::INTERNAL, format!("ReseedRandomDev: {e}")))?;
        Ok(Empty::new())
    }

    // The network RPCs (crate::network). Changes are refused in service
    // mode: there the agent's namespace is the host's.

    fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> ttrpc::Result<protocols::types::Interface> {
        self.refuse_network_change_in_service_mode("UpdateInterface")?;
        let interface = req.interface.as_ref().ok_or_else(|| {
            status(
                Code::INVALID_ARGUMENT,
                "UpdateInterface: interface: missing",
            )
        })?;
        reply("UpdateInterface", network::update_interface(interface))
    }

    fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        self.refuse_network_change_in_service_mode("UpdateRoutes")?;
        let wanted = req
            .routes
            .as_ref()
            .map(|r| r.Routes.as_slice())
            .unwrap_or_default();
        let mut routes = agent::Routes::new();
        routes.Routes = reply("UpdateRoutes", network::update_routes(wanted))?;
        Ok(routes)
    }

    fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListInterfacesRequest,
    ) -> ttrpc::Result<agent::Interfaces> {
        let mut interfaces = agent::Interfaces::new();
        interfaces.Interfaces = reply("ListInterfaces", network::list_interfaces())?;
        Ok(interfaces)
    }

    fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::ListRoutesRequest,
    ) -> ttrpc::Result<agent::Routes> {
        let mut routes = agent::Routes::new();
        routes.Routes = reply("ListRoutes", network::list_routes())?;
        Ok(routes)
    }

    fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        self.refuse_network_change_in_service_mode("AddARPNeighbors")?;
        let neighbours = req
            .neighbors
            .as_ref()
            .map(|n| n.ARPNeighbors.as_slice())
            .unwrap_or_default();
        reply("AddARPNeighbors", network::add_neighbours(neighbours))?;
        Ok(Empty::new())
    }
}

impl AgentService {
    /// CreateSandbox's `kernel_modules` (see kmod). Only in a guest: a
    /// service-mode agent does not load modules into the host's kernel.
    fn load_kernel_modules(&self, modules: &[protocols::agent::KernelModule]) -> ttrpc::Result<()> {
        if !self.state.config.owns_guest {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "CreateSandbox: kernel_modules: the agent runs in service mode (not PID 1 of a VM) and does not load modules into the host's kernel",
            ));
        }
        let internal = |e: kmod::KmodError| status(Code::INTERNAL, format!("CreateSandbox: {e}"));
        let dir = kmod::running_kernel_dir().map_err(internal)?;
        let index = kmod::ModuleIndex::load(&dir).map_err(internal)?;
        let loaded = kmod::load_all(&index, modules, &mut kmod::KernelLoader).map_err(|e| {
            let code = match e {
                kmod::KmodError::NotFound { .. } => Code::NOT_FOUND,
                kmod::KmodError::Invalid { .. } | kmod::KmodError::BuiltinWithParameters { .. } => {
                    Code::INVALID_ARGUMENT
                }
                _ => Code::INTERNAL,
            };
            status(code, format!("CreateSandbox: {e}"))
        })?;
        log::info!(
            "CreateSandbox: kernel modules {:?} requested, loaded now: {loaded:?}",
            modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>()
        );
        Ok(())
    }

    fn refuse_network_change_in_service_mode(&self, method: &str) -> ttrpc::Result<()> {
        if self.state.config.owns_guest {
            return Ok(());
        }
        Err(status(
            Code::FAILED_PRECONDITION,
            format!("{method}: the agent runs in service mode (not PID 1 of a VM) and does not change the host's network"),
        ))
    }
}

/// Wraps a generated method handler so that a request payload that does not
/// decode gets an INVALID_ARGUMENT reply. ttrpc 0.9's generated handlers
/// return an error for it, which makes the server drop the whole connection
/// without telling the client why.
struct DecodeErrorReply {
    path: String,
    inner: Box<dyn MethodHandler + Send + Sync>,
}

impl MethodHandler for DecodeErrorReply {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let stream_id = ctx.mh.stream_id;
        let res_tx = ctx.res_tx.clone();
        match self.inner.handler(ctx, req) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The generated handler fails only before it queued a reply
                // (decode/encode) or when the reply channel is gone; in the
                // latter case this send fails too and the connection ends.
                log::warn!("{}: bad request: {e}", self.path);
                let mut res = ttrpc::Response::new();
                res.set_status(ttrpc::get_status(
                    Code::INVALID_ARGUMENT,
                    format!("{}: cannot decode the request: {e}", self.path),
                ));
                ttrpc::response_to_channel(stream_id, res, res_tx)
            }
        }
    }
}

pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// Every method of both services, ready for `ttrpc::Server::register_service`.
pub fn methods(state: Arc<AgentState>) -> Methods {
    let mut all = agent_ttrpc::create_agent_service(Arc::new(AgentService { state }));
    all.extend(health_ttrpc::create_health(Arc::new(HealthService)));
    all.into_iter()
        .map(|(path, inner)| {
            let wrapped: Box<dyn MethodHandler + Send + Sync> = Box::new(DecodeErrorReply {
                path: path.clone(),
                inner,
            });
            (path, wrapped)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("sandbox-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }

    #[test]
    fn every_agent_method_is_registered_and_wrapped() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let config = Arc::new(Config::load(false, &|_: &str| Some("/nonexistent".into())));
        let m = methods(AgentState::new(config, tx, Reaper::inert()));
        assert!(m.contains_key("/grpc.Health/Check"));
        assert!(m.contains_key("/grpc.AgentService/CreateSandbox"));
        assert!(m.contains_key("/grpc.AgentService/ReadStdout"));
        assert!(m.contains_key("/grpc.AgentService/GetVolumeStats"));
        assert!(m.contains_key("/grpc.AgentService/ResizeVolume"));
        assert!(m.contains_key("/grpc.AgentService/GetIPTables"));
        assert!(m.contains_key("/grpc.AgentService/SetIPTables"));
    }
}
