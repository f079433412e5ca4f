//! containerd's task service (shim v2, `containerd.task.v2.Task`) on top of
//! one sandbox VM and its agent.
//!
//! Each task (container init process) and exec is a [`Proc`]. Its pid, as
//! upstream's shim reports it, is QEMU's: the guest's pids mean nothing on
//! the host. A waiter thread per started process holds a WaitProcess call on
//! its own agent connection; its return publishes `/tasks/exit`. A watcher
//! thread per sandbox notices QEMU's death and ends every process with
//! status [`VM_DIED_STATUS`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcContext, TtrpcResult};
use protocols::agent::{
    CreateContainerRequest, ExecProcessRequest, PauseContainerRequest, RemoveContainerRequest,
    ResumeContainerRequest, SignalProcessRequest, StartContainerRequest, StatsContainerRequest,
    TtyWinResizeRequest, UpdateContainerRequest, WaitProcessRequest,
};
use ttrpc::Code;

use super::mounts;
use super::sandbox::Sandbox;
use super::stats::metrics_from_agent;
use super::stdio::{StdioPaths, StdioRelay};
use crate::agent_client::{AgentClient, DEFAULT_CONNECT_TIMEOUT};
use crate::config::KataConfig;
use crate::oci;

/// Exit status of every process when its VM dies (as a killed process:
/// nothing better is known).
pub const VM_DIED_STATUS: u32 = 255;

/// Why the sandbox's VM is dead, if it died (not if it was shut down):
/// looked for during a short grace, as a process's death is seen by its
/// peers a moment before it can be reaped.
fn vm_death(sandbox: &Sandbox) -> Option<String> {
    vm_stopped(sandbox, false)
}

/// Why the sandbox's VM no longer runs, whether it died or was shut down
/// (a concurrent delete), during the same grace as [`vm_death`].
fn vm_gone(sandbox: &Sandbox) -> Option<String> {
    vm_stopped(sandbox, true)
}

fn vm_stopped(sandbox: &Sandbox, shutdown_counts: bool) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        if !shutdown_counts && sandbox.was_shut_down() {
            return None;
        }
        if let Err(why) = sandbox.check_alive() {
            return Some(why);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bound for a process's output to drain before its exit is published.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How often the sandbox watcher checks QEMU.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A process's status after SIGKILL (128 + 9), what the OOM killer leaves.
const SIGKILL_STATUS: u32 = 137;
/// How long a SIGKILLed container's exit waits for the agent's OOM report
/// (it usually comes within milliseconds; a kill that was not the OOM
/// killer's pays this once).
const OOM_BEFORE_EXIT_GRACE: Duration = Duration::from_millis(500);
/// Pause before the OOM event loop calls again after a failed call.
const OOM_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Seconds the agent may take to stop a container's processes on delete.
const REMOVE_TIMEOUT_SECS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    fn api(self) -> api::Status {
        match self {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        }
    }
}

struct ProcState {
    status: Status,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    relay: Option<StdioRelay>,
}

/// A container's init process or an exec.
struct Proc {
    cid: String,
    /// containerd's exec id; empty for the init process.
    exec_id: String,
    stdio: StdioPaths,
    /// exec only: the process to run.
    exec_spec: Option<protocols::oci::Process>,
    state: Mutex<ProcState>,
    exited: Condvar,
}

impl Proc {
    fn new(cid: &str, exec_id: &str, stdio: StdioPaths) -> Proc {
        Proc {
            cid: cid.into(),
            exec_id: exec_id.into(),
            stdio,
            exec_spec: None,
            state: Mutex::new(ProcState {
                status: Status::Created,
                exit_status: 0,
                exited_at: None,
                relay: None,
            }),
            exited: Condvar::new(),
        }
    }

    /// The agent's exec id: the container id for the init process.
    fn agent_exec_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.cid
        } else {
            &self.exec_id
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the exit once; returns false if it was already recorded.
    fn set_exited(&self, status: u32) -> bool {
        let mut s = self.lock();
        if s.status == Status::Stopped {
            return false;
        }
        s.status = Status::Stopped;
        s.exit_status = status;
        s.exited_at = Some(SystemTime::now());
        self.exited.notify_all();
        true
    }
}

struct Container {
    bundle: PathBuf,
    /// The sandbox this container created (its VM goes with it).
    owns_sandbox: bool,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

#[derive(Default)]
struct State {
    sandbox: Option<Arc<Sandbox>>,
    containers: HashMap<String, Container>,
}

pub struct Service {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    state: Arc<Mutex<State>>,
    config: Mutex<Option<Arc<KataConfig>>>,
}

fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut out = Timestamp::new();
    out.seconds = d.as_secs() as i64;
    out.nanos = d.subsec_nanos() as i32;
    out
}

fn status_err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    let msg = msg.into();
    log::warn!("{msg}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn internal(msg: impl Into<String>) -> ttrpc::Error {
    status_err(Code::INTERNAL, msg)
}

fn not_found(msg: impl Into<String>) -> ttrpc::Error {
    status_err(Code::NOT_FOUND, msg)
}

/// An agent call's failure, for container `cid`: the agent's own status
/// (INVALID_ARGUMENT, NOT_FOUND...; its message names the method) is kept,
/// so containerd and kubelet see what it says; transport failures are
/// INTERNAL and name `method`.
fn agent_err(cid: &str, method: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            status_err(s.code(), format!("container {cid}: {}", s.message))
        }
        e => internal(format!("container {cid}: {method}: {e}")),
    }
}

fn publish(publisher: &RemotePublisher, namespace: &str, event: impl Event + 'static) {
    let topic = event.topic();
    log::debug!("publish {topic}");
    if let Err(e) = publisher.publish(Context::default(), &topic, namespace, Box::new(event)) {
        log::warn!("publish {topic}: {e}");
    }
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.to_string(),
            publisher: Arc::new(publisher),
            exit,
            state: Arc::new(Mutex::new(State::default())),
            config: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration, loaded at the first create: from `requested`
    /// (containerd's runtime option `ConfigPath`, which upstream reads ahead
    /// of `KATA_CONF_FILE`) or else the standard lookup. A sandbox keeps
    /// the configuration it started with.
    fn config(&self, requested: Option<&Path>) -> ttrpc::Result<Arc<KataConfig>> {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = c.as_ref() {
            if let Some(r) = requested.filter(|r| *r != c.file) {
                log::warn!(
                    "ConfigPath {} ignored: this shim's sandbox runs with {}",
                    r.display(),
                    c.file.display()
                );
            }
            return Ok(c.clone());
        }
        let loaded = match requested {
            Some(file) => crate::config::load_file(file).map_err(|e| {
                status_err(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "configuration named by containerd's runtime option ConfigPath: {}",
                        crate::error_chain(&e)
                    ),
                )
            }),
            None => crate::config::load().map_err(|e| {
                status_err(
                    Code::FAILED_PRECONDITION,
                    format!("configuration: {}", crate::error_chain(&e)),
                )
            }),
        };
        let loaded = Arc::new(loaded?);
        // The shim's log level was set at start from the standard lookup;
        // a ConfigPath configuration may ask for debug too.
        if loaded.debug() && log::max_level() < log::LevelFilter::Debug {
            log::set_max_level(log::LevelFilter::Debug);
        }
        log::info!("configuration loaded from {}", loaded.file.display());
        if !loaded.ignored.is_empty() {
            log::warn!(
                "{}: not used by this runtime, ignored: {}",
                loaded.file.display(),
                loaded.ignored.join(", ")
            );
        }
        for w in loaded.warnings() {
            log::warn!("{w}");
        }
        *c = Some(loaded.clone());
        Ok(loaded)
    }

    fn publish(&self, event: impl Event + 'static) {
        publish(&self.publisher, &self.namespace, event)
    }

    fn find(&self, id: &str, exec_id: &str) -> ttrpc::Result<(Arc<Proc>, Arc<Sandbox>)> {
        let st = self.lock();
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| not_found(format!("container {id} not found")))?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(format!("exec {exec_id} of container {id} not found")))?
        };
        let sb = st
            .sandbox
            .clone()
            .ok_or_else(|| not_found(format!("container {id}: no sandbox")))?;
        Ok((p, sb))
    }

    /// A watcher that ends every process when QEMU dies and cleans the
    /// sandbox's host side up.
    fn watch_sandbox(&self, sandbox: Arc<Sandbox>) {
        let state = self.state.clone();
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(WATCH_INTERVAL);
            {
                let st = state.lock().unwrap_or_else(|e| e.into_inner());
                match &st.sandbox {
                    Some(s) if Arc::ptr_eq(s, &sandbox) => {}
                    _ => return, // deleted normally
                }
            }
            let Err(why) = sandbox.check_alive() else {
                continue;
            };
            // A delete or shutdown stopping the VM is not a death: that
            // path tears down, and tearing down twice at once raced (both
            // waited for the same QEMU).
            if sandbox.was_shut_down() {
                return;
            }
            log::error!("sandbox {}: the VM died: {why}", sandbox.id);
            let procs: Vec<Arc<Proc>> = {
                let st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.containers
                    .values()
                    .flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned()))
                    .collect()
            };
            // Stopping the daemons ends the relays' and waiters' calls.
            for p in sandbox.destroy(false) {
                log::warn!("sandbox {}: cleanup after VM death: {p}", sandbox.id);
            }
            for p in procs {
                let was_started = p.lock().status != Status::Created;
                if p.set_exited(VM_DIED_STATUS) && was_started {
                    publish_exit(&publisher, &namespace, &p, sandbox.vm_pid);
                }
            }
            return;
        });
    }

    /// One loop per sandbox: GetOOMEvent on a connection of its own
    /// (the call blocks until an OOM kill), each event published as
    /// `/tasks/oom`, which CRI turns into the reason `OOMKilled`. It ends
    /// with the sandbox: the agent ends the call on DestroySandbox, the
    /// connection with the VM.
    fn watch_oom(&self, sandbox: Arc<Sandbox>) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        std::thread::spawn(move || {
            let ended = || sandbox.was_shut_down() || sandbox.check_alive().is_err();
            let mut client = None;
            while !ended() {
                if client.is_none() {
                    match AgentClient::connect(
                        &sandbox.address,
                        DEFAULT_CONNECT_TIMEOUT,
                        Duration::ZERO,
                    ) {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            log::debug!("sandbox {}: OOM events: connect: {e}", sandbox.id);
                            std::thread::sleep(OOM_RETRY_INTERVAL);
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                match c.agent().get_oom_event(
                    ttrpc::context::Context::default(),
                    &protocols::agent::GetOOMEventRequest::new(),
                ) {
                    Ok(event) => {
                        log::info!(
                            "sandbox {}: container {} had an OOM kill",
                            sandbox.id,
                            event.container_id
                        );
                        let mut ev = TaskOOM::new();
                        ev.container_id = event.container_id.clone();
                        publish(&publisher, &namespace, ev);
                        sandbox.oom_kills.record(&event.container_id);
                    }
                    // DestroySandbox: nothing more will come
                    Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::UNAVAILABLE => {
                        log::debug!("sandbox {}: OOM events end: {}", sandbox.id, s.message);
                        return;
                    }
                    Err(e) => {
                        log::debug!("sandbox {}: GetOOMEvent: {e}", sandbox.id);
                        client = None;
                        std::thread::sleep(OOM_RETRY_INTERVAL);
                    }
                }
            }
        });
    }

    fn do_create(&self, req: &api::CreateTaskRequest) -> ttrpc::Result<u32> {
        let cid = req.id.as_str();
        protocols::ids::check_id("container id", cid)
            .map_err(|m| status_err(Code::INVALID_ARGUMENT, m))?;
        if self.lock().containers.contains_key(cid) {
            return Err(status_err(
                Code::ALREADY_EXISTS,
                format!("container {cid} already exists"),
            ));
        }
        let requested = super::runtime_options::config_path(req.options.as_ref())
            .map_err(|m| status_err(Code::INVALID_ARGUMENT, m))?;
        let cfg = self.config(requested.as_deref())?;
        let bundle = PathBuf::from(&req.bundle);
        let config_json = bundle.join("config.json");
        let text = std::fs::read_to_string(&config_json)
            .map_err(|e| internal(format!("{}: {e}", config_json.display())))?;
        let mut spec = oci::spec_from_json(&text).map_err(|e| {
            status_err(
                Code::INVALID_ARGUMENT,
                format!("{}: {e}", config_json.display()),
            )
        })?;

        crate::config::check_override_annotations(spec.Annotations.keys())
            .map_err(|m| status_err(Code::INVALID_ARGUMENT, format!("container {cid}: {m}")))?;
        // Upstream's disable_guest_seccomp: the VM is the boundary, and the
        // profile is not applied inside it unless asked for.
        if cfg.runtime.disable_guest_seccomp {
            if let Some(linux) = spec.Linux.as_mut() {
                linux.Seccomp.clear();
            }
        }
        // CRI: a "container" joins the sandbox named by its annotation.
        let joins = super::annotations::joined_sandbox(&spec.Annotations).map_err(|m| {
            status_err(
                Code::INVALID_ARGUMENT,
                format!("{}: {m}", config_json.display()),
            )
        })?;
        let (sandbox, owns) = match joins {
            Some(sid) => {
                let st = self.lock();
                match &st.sandbox {
                    Some(sb) if sb.id == sid => (sb.clone(), false),
                    _ => {
                        return Err(status_err(
                            Code::FAILED_PRECONDITION,
                            format!(
                                "container {cid} joins sandbox {sid}, which this shim does not run"
                            ),
                        ))
                    }
                }
            }
            None => {
                if self.lock().sandbox.is_some() {
                    return Err(status_err(
                        Code::FAILED_PRECONDITION,
                        format!("container {cid}: this shim already runs a sandbox; a second one needs its own shim"),
                    ));
                }
                let hostname = if spec.Hostname.is_empty() {
                    cid.to_string()
                } else {
                    spec.Hostname.clone()
                };
                let sized;
                let vm_cfg = if cfg.runtime.static_sandbox_resource_mgmt {
                    let size = super::sizing::workload_size(&spec).map_err(|m| {
                        status_err(Code::INVALID_ARGUMENT, format!("container {cid}: {m}"))
                    })?;
                    sized = super::sizing::sized(&cfg, &size);
                    log::info!(
                        "sandbox {cid}: static_sandbox_resource_mgmt: {} vCPU(s), {} MiB ({} configured, +{} vCPU(s) and +{} MiB from {})",
                        sized.hypervisor.default_vcpus,
                        sized.hypervisor.default_memory,
                        format_args!("{}/{} MiB", cfg.hypervisor.default_vcpus, cfg.hypervisor.default_memory),
                        size.vcpus,
                        size.memory_mib,
                        size.from
                    );
                    &sized
                } else {
                    &*cfg
                };
                let netns = oci::network_namespace_path(&spec);
                let sb = Sandbox::start(vm_cfg, cid, &hostname, netns.as_deref())
                    .map_err(|e| internal(format!("{e:#}")))?;
                (Arc::new(sb), true)
            }
        };
        let fail_cleanup = || {
            if !owns {
                for p in sandbox.volumes.detach_container(cid) {
                    log::warn!("container {cid}: {p}");
                }
            }
            let _ = mounts::unmount_and_remove(
                &sandbox.state_root,
                &mounts::shared_rel(&sandbox.id, Some(cid)),
            );
            if owns {
                sandbox.destroy(true);
            }
        };

        let sandbox_pidns = oci::shares_sandbox_pidns(&spec);
        let host_dir = sandbox.shared_dir.join(cid);
        let storages = match self.prepare_container(&sandbox, req, &bundle, &host_dir, &mut spec) {
            Ok(s) => s,
            Err(e) => {
                fail_cleanup();
                return Err(e);
            }
        };

        let mut creq = CreateContainerRequest::new();
        creq.container_id = cid.into();
        creq.exec_id = cid.into();
        // CRI's shareProcessNamespace: the pod's container names the
        // sandbox's PID namespace; the agent puts it in the sandbox
        // container's (see oci::shares_sandbox_pidns).
        creq.sandbox_pidns = !owns && sandbox_pidns;
        creq.OCI = MessageField::some(spec);
        creq.storages = storages;
        if let Err(e) = sandbox
            .agent
            .agent()
            .create_container(sandbox.agent.context(), &creq)
        {
            fail_cleanup();
            return Err(internal(format!("container {cid}: CreateContainer: {e}")));
        }

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Proc::new(cid, "", stdio.clone()));
        // The agent created the process with its stdio: relay from now on.
        init.lock().relay = Some(StdioRelay::start(
            &sandbox.address,
            sandbox.call_timeout,
            cid,
            cid,
            &stdio,
        ));
        {
            let mut st = self.lock();
            if owns {
                st.sandbox = Some(sandbox.clone());
            }
            st.containers.insert(
                cid.to_string(),
                Container {
                    bundle: bundle.clone(),
                    owns_sandbox: owns,
                    init,
                    execs: HashMap::new(),
                },
            );
        }
        if owns {
            self.watch_sandbox(sandbox.clone());
            self.watch_oom(sandbox.clone());
        }
        let mut ev = TaskCreate::new();
        ev.container_id = cid.into();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        ev.io = MessageField::some(io);
        ev.pid = sandbox.vm_pid;
        self.publish(ev);
        Ok(sandbox.vm_pid)
    }

    /// Rootfs and bind-mount sources into the shared directory; the spec
    /// adapted to the guest.
    fn prepare_container(
        &self,
        sandbox: &Sandbox,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        host_dir: &Path,
        spec: &mut protocols::oci::Spec,
    ) -> ttrpc::Result<Vec<protocols::agent::Storage>> {
        let cid = req.id.as_str();
        let mut storages = Vec::new();
        mounts::mount_rootfs(&req.rootfs, bundle, &host_dir.join("rootfs"))
            .map_err(|e| internal(format!("container {cid}: {e:#}")))?;
        // Bind mounts from the host (volumes, CRI's /etc/hosts...): their
        // sources are bind-mounted into the shared directory.
        for (i, m) in spec.Mounts.iter_mut().enumerate() {
            let is_bind =
                m.type_ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
            if !is_bind {
                continue;
            }
            // A direct-assigned volume: its device goes to the VM, and the
            // container binds the agent's mount of it.
            let direct = sandbox.volumes.lookup(&m.source).map_err(|e| {
                status_err(
                    Code::INVALID_ARGUMENT,
                    format!("container {cid}: mount {}: {e}", m.destination),
                )
            })?;
            if let Some(info) = direct {
                let storage = sandbox.volumes.attach(cid, &m.source, &info).map_err(|e| {
                    internal(format!("container {cid}: mount {}: {e}", m.destination))
                })?;
                m.source = storage.mount_point.clone();
                m.type_ = "bind".into();
                storages.push(storage);
                continue;
            }
            let src = PathBuf::from(&m.source);
            let name = format!(
                "{i}-{}",
                src.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            let readonly = m.options.iter().any(|o| o == "ro");
            mounts::bind(&src, &host_dir.join("mounts").join(&name), readonly).map_err(|e| {
                internal(format!("container {cid}: mount {}: {e:#}", m.destination))
            })?;
            m.source = format!("{}/{cid}/mounts/{name}", oci::GUEST_SHARED_DIR);
            m.type_ = "bind".into();
        }
        let done = oci::adapt_for_guest(spec, cid);
        if sandbox.shares_guest_netns() {
            // The pod's interfaces live in the guest's own namespace.
            if let Some(linux) = spec.Linux.as_mut() {
                linux.Namespaces.retain(|n| n.Type != "network");
            }
        }
        if done.dropped_hooks > 0 {
            log::warn!(
                "container {cid}: {} OCI hooks are not run (host hooks cannot run in the guest)",
                done.dropped_hooks
            );
        }
        if !done.dropped_namespace_paths.is_empty() {
            log::info!(
                "container {cid}: host namespace paths dropped (the guest has its own): {:?}",
                done.dropped_namespace_paths
            );
        }
        log::debug!(
            "sandbox {}: container {cid} rootfs at {}",
            sandbox.id,
            host_dir.join("rootfs").display()
        );
        Ok(storages)
    }

    /// Start the waiter of a started process: WaitProcess on its own
    /// connection, then drain the output and publish `/tasks/exit`.
    fn spawn_waiter(&self, p: Arc<Proc>, sandbox: Arc<Sandbox>) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        std::thread::spawn(move || {
            let status = (|| -> anyhow::Result<u32> {
                let client = AgentClient::connect(
                    &sandbox.address,
                    DEFAULT_CONNECT_TIMEOUT,
                    Duration::ZERO,
                )?;
                let mut req = WaitProcessRequest::new();
                req.container_id = p.cid.clone();
                req.exec_id = p.agent_exec_id().to_string();
                let r = client
                    .agent()
                    .wait_process(ttrpc::context::Context::default(), &req)
                    .map_err(|e| anyhow::anyhow!("WaitProcess: {e}"))?;
                Ok(r.status as u32)
            })();
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("{}/{}: wait failed: {e:#}", p.cid, p.agent_exec_id());
                    // Usually because the VM died (the agent's connection
                    // went with it): say so, and why, here, as the
                    // container may be deleted before the watcher looks.
                    if let Some(why) = vm_death(&sandbox) {
                        log::error!("sandbox {}: the VM died: {why}", sandbox.id);
                    }
                    VM_DIED_STATUS
                }
            };
            // Killed by SIGKILL: if the OOM killer did it, CRI must see the
            // OOM event first (its reason OOMKilled comes from the event; a
            // status read between the exit and a later event says "Error"),
            // and the two come over separate agent calls.
            if status == SIGKILL_STATUS && p.exec_id.is_empty() {
                sandbox.oom_kills.wait_for(&p.cid, OOM_BEFORE_EXIT_GRACE);
            }
            let relay = p.lock().relay.take();
            if let Some(mut r) = relay {
                if !r.wait_outputs(OUTPUT_DRAIN) {
                    log::warn!(
                        "{}/{}: output not drained within {OUTPUT_DRAIN:?}",
                        p.cid,
                        p.agent_exec_id()
                    );
                }
            }
            if p.set_exited(status) {
                log::info!(
                    "{}/{}: exited with status {status}",
                    p.cid,
                    p.agent_exec_id()
                );
                publish_exit(&publisher, &namespace, &p, sandbox.vm_pid);
            }
        });
    }

    fn do_start(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        let (p, sb) = self.find(id, exec_id)?;
        if p.lock().status != Status::Created {
            return Err(status_err(
                Code::FAILED_PRECONDITION,
                format!("{id}/{exec_id}: already started"),
            ));
        }
        sb.check_alive()
            .map_err(|e| internal(format!("sandbox {}: {e}", sb.id)))?;
        if exec_id.is_empty() {
            let mut req = StartContainerRequest::new();
            req.container_id = id.into();
            sb.agent
                .agent()
                .start_container(sb.agent.context(), &req)
                .map_err(|e| internal(format!("container {id}: StartContainer: {e}")))?;
        } else {
            let mut req = ExecProcessRequest::new();
            req.container_id = id.into();
            req.exec_id = exec_id.into();
            req.process = MessageField::from_option(p.exec_spec.clone());
            sb.agent
                .agent()
                .exec_process(sb.agent.context(), &req)
                .map_err(|e| internal(format!("container {id}: ExecProcess {exec_id}: {e}")))?;
            p.lock().relay = Some(StdioRelay::start(
                &sb.address,
                sb.call_timeout,
                id,
                exec_id,
                &p.stdio,
            ));
        }
        p.lock().status = Status::Running;
        self.spawn_waiter(p.clone(), sb.clone());
        if exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = id.into();
            ev.pid = sb.vm_pid;
            self.publish(ev);
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.into();
            ev.exec_id = exec_id.into();
            ev.pid = sb.vm_pid;
            self.publish(ev);
        }
        Ok(sb.vm_pid)
    }

    fn do_delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::DeleteResponse> {
        let (p, sb) = self.find(id, exec_id)?;
        let (status, exit_status, exited_at) = {
            let s = p.lock();
            (s.status, s.exit_status, s.exited_at)
        };
        if status == Status::Running || status == Status::Paused {
            return Err(status_err(
                Code::FAILED_PRECONDITION,
                format!("{id}/{exec_id}: cannot delete a running process; kill it first"),
            ));
        }
        // A process deleted before it ever ran (its start failed, e.g. the
        // agent timed out) must still end: a `wait` on it would otherwise
        // block forever, and ttrpc's shutdown waits for that handler.
        let (exit_status, exited_at) = if status == Status::Stopped {
            (exit_status, exited_at)
        } else {
            p.set_exited(VM_DIED_STATUS);
            (VM_DIED_STATUS, Some(SystemTime::now()))
        };
        crate::shim::stdio::unblock_fifo_reader(&p.stdio.stdin);
        let exited_at = exited_at.unwrap_or_else(SystemTime::now);
        let mut resp = api::DeleteResponse::new();
        resp.pid = sb.vm_pid;
        resp.exit_status = exit_status;
        resp.exited_at = MessageField::some(ts(exited_at));
        if !exec_id.is_empty() {
            if let Some(c) = self.lock().containers.get_mut(id) {
                c.execs.remove(exec_id);
            }
            return Ok(resp);
        }

        let mut problems = Vec::new();
        if sb.check_alive().is_ok() {
            let mut req = RemoveContainerRequest::new();
            req.container_id = id.into();
            req.timeout = REMOVE_TIMEOUT_SECS;
            if let Err(e) = sb.agent.agent().remove_container(
                ttrpc::context::with_duration(
                    sb.call_timeout + Duration::from_secs(REMOVE_TIMEOUT_SECS as u64),
                ),
                &req,
            ) {
                problems.push(format!("RemoveContainer: {e}"));
            }
        }
        let container = self.lock().containers.remove(id);
        if let Some(c) = container {
            // The agent unmounted them at RemoveContainer; a sandbox that
            // goes takes its devices with its VM.
            if !c.owns_sandbox {
                problems.extend(sb.volumes.detach_container(id));
            }
            problems.extend(mounts::unmount_and_remove(
                &sb.state_root,
                &mounts::shared_rel(&sb.id, Some(id)),
            ));
            if c.owns_sandbox {
                problems.extend(sb.destroy(true));
                self.lock().sandbox = None;
            }
            log::info!("container {id} deleted (bundle {})", c.bundle.display());
        }
        for problem in &problems {
            log::warn!("container {id}: delete: {problem}");
        }
        let mut ev = TaskDelete::new();
        ev.container_id = id.into();
        ev.pid = sb.vm_pid;
        ev.exit_status = exit_status;
        ev.exited_at = MessageField::some(ts(exited_at));
        self.publish(ev);
        Ok(resp)
    }
}

fn publish_exit(publisher: &RemotePublisher, namespace: &str, p: &Proc, pid: u32) {
    let s = p.lock();
    let mut ev = TaskExit::new();
    ev.container_id = p.cid.clone();
    ev.id = if p.exec_id.is_empty() {
        p.cid.clone()
    } else {
        p.exec_id.clone()
    };
    ev.pid = pid;
    ev.exit_status = s.exit_status;
    ev.exited_at = MessageField::some(ts(s.exited_at.unwrap_or_else(SystemTime::now)));
    drop(s);
    publish(publisher, namespace, ev);
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!(
            "create {} (bundle {}, {} rootfs mounts, terminal {})",
            req.id,
            req.bundle,
            req.rootfs.len(),
            req.terminal
        );
        let pid = self.do_create(&req)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        log::info!("start {} {}", req.id, req.exec_id);
        let pid = self.do_start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (p, sb) = self.find(&req.id, &req.exec_id)?;
        let bundle = self
            .lock()
            .containers
            .get(&req.id)
            .map(|c| c.bundle.display().to_string())
            .unwrap_or_default();
        let s = p.lock();
        let mut r = api::StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = bundle;
        r.pid = sb.vm_pid;
        r.status = EnumOrUnknown::new(s.status.api());
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        r.exit_status = s.exit_status;
        if let Some(t) = s.exited_at {
            r.exited_at = MessageField::some(ts(t));
        }
        Ok(r)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        log::info!(
            "exec {} {} (terminal {})",
            req.id,
            req.exec_id,
            req.terminal
        );
        protocols::ids::check_id("exec id", &req.exec_id)
            .map_err(|m| status_err(Code::INVALID_ARGUMENT, m))?;
        let mut process = oci::process_from_json(&req.spec.value).map_err(|e| {
            status_err(Code::INVALID_ARGUMENT, format!("exec {}: {e}", req.exec_id))
        })?;
        oci::adapt_process(&mut process);
        process.Terminal = req.terminal;
        let mut p = Proc::new(
            &req.id,
            &req.exec_id,
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.exec_spec = Some(process);
        {
            let mut st = self.lock();
            let c = st
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(status_err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            c.execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publish(ev);
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (p, _sb) = self.find(&req.id, &req.exec_id)?;
        // Logged: a wait that never returns holds the shim's shutdown up.
        log::debug!("wait {} {}", req.id, req.exec_id);
        let mut s = p.lock();
        while s.status != Status::Stopped {
            s = p.exited.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let mut r = api::WaitResponse::new();
        r.exit_status = s.exit_status;
        r.exited_at = MessageField::some(ts(s.exited_at.unwrap_or_else(SystemTime::now)));
        Ok(r)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!(
            "kill {} {} signal {} all {}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        let (p, sb) = self.find(&req.id, &req.exec_id)?;
        let status = p.lock().status;
        if status == Status::Stopped {
            return Err(not_found(format!(
                "{}/{}: process already finished",
                req.id, req.exec_id
            )));
        }
        if status == Status::Created && req.exec_id.is_empty() {
            // Never started: nothing runs; the kill ends it (as runc does).
            if p.set_exited(128 + req.signal) {
                publish_exit(&self.publisher, &self.namespace, &p, sb.vm_pid);
            }
            return Ok(api::Empty::new());
        }
        if sb.check_alive().is_err() {
            return Ok(api::Empty::new());
        }
        let mut sreq = SignalProcessRequest::new();
        sreq.container_id = req.id.clone();
        sreq.exec_id = if req.all && req.exec_id.is_empty() {
            String::new()
        } else {
            p.agent_exec_id().to_string()
        };
        sreq.signal = req.signal;
        if let Err(e) = sb.agent.agent().signal_process(sb.agent.context(), &sreq) {
            // A VM killed a moment ago breaks the agent's connection before
            // QEMU's exit can be seen: the signal then finds its process
            // already ended with its VM, whose exit the watcher publishes
            // (a force-delete waits for it). The agent's own answers, and
            // anything while the VM lives, are errors.
            let transport = !matches!(e, ttrpc::Error::RpcStatus(_));
            if let Some(why) = transport.then(|| vm_gone(&sb)).flatten() {
                log::info!(
                    "{}/{}: signal {} not sent: the VM is gone: {why}",
                    req.id,
                    req.exec_id,
                    req.signal
                );
                return Ok(api::Empty::new());
            }
            return Err(internal(format!(
                "{}/{}: SignalProcess {}: {e}",
                req.id, req.exec_id, req.signal
            )));
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {} {}", req.id, req.exec_id);
        self.do_delete(&req.id, &req.exec_id)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let (_p, sb) = self.find(&req.id, "")?;
        let mut info = containerd_shim::protos::types::task::ProcessInfo::new();
        info.pid = sb.vm_pid;
        let mut r = api::PidsResponse::new();
        r.processes.push(info);
        Ok(r)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let (p, sb) = self.find(&req.id, "")?;
        let mut preq = PauseContainerRequest::new();
        preq.container_id = req.id.clone();
        sb.agent
            .agent()
            .pause_container(sb.agent.context(), &preq)
            .map_err(|e| internal(format!("container {}: PauseContainer: {e}", req.id)))?;
        p.lock().status = Status::Paused;
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.publish(ev);
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let (p, sb) = self.find(&req.id, "")?;
        let mut rreq = ResumeContainerRequest::new();
        rreq.container_id = req.id.clone();
        sb.agent
            .agent()
            .resume_container(sb.agent.context(), &rreq)
            .map_err(|e| internal(format!("container {}: ResumeContainer: {e}", req.id)))?;
        {
            let mut s = p.lock();
            if s.status == Status::Paused {
                s.status = Status::Running;
            }
        }
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.publish(ev);
        Ok(api::Empty::new())
    }

    /// New resource limits of a container (kubelet's
    /// UpdateContainerResources, `Task.Update`): containerd's `Any`
    /// ([`oci::LINUX_RESOURCES_TYPE_URL`]) goes to the agent's
    /// UpdateContainer, which writes the container's guest cgroup.
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        log::info!("update {}", req.id);
        let (_p, sb) = self.find(&req.id, "")?;
        let any = req.resources.as_ref().ok_or_else(|| {
            status_err(
                Code::INVALID_ARGUMENT,
                format!("update {}: resources is missing", req.id),
            )
        })?;
        let resources = oci::resources_from_any(&any.type_url, &any.value)
            .map_err(|e| status_err(Code::INVALID_ARGUMENT, format!("update {}: {e}", req.id)))?;
        let mut ureq = UpdateContainerRequest::new();
        ureq.container_id = req.id.clone();
        ureq.resources = MessageField::some(resources);
        sb.agent
            .agent()
            .update_container(sb.agent.context(), &ureq)
            .map_err(|e| agent_err(&req.id, "UpdateContainer", e))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if !req.stdin {
            return Ok(api::Empty::new());
        }
        let (p, sb) = self.find(&req.id, &req.exec_id)?;
        // The stdin relay sends CloseStdin itself when its FIFO reaches EOF,
        // which follows the client's close; only force it if that does not
        // happen soon (a client that closes without closing the FIFO).
        let cid = req.id.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                let finished = p
                    .lock()
                    .relay
                    .as_ref()
                    .map(|r| r.stdin_finished())
                    .unwrap_or(true);
                if finished {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut creq = protocols::agent::CloseStdinRequest::new();
            creq.container_id = cid;
            creq.exec_id = p.agent_exec_id().to_string();
            if let Err(e) = sb.agent.agent().close_stdin(sb.agent.context(), &creq) {
                log::warn!("CloseStdin: {e}");
            }
        });
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (p, sb) = self.find(&req.id, &req.exec_id)?;
        let mut rreq = TtyWinResizeRequest::new();
        rreq.container_id = req.id.clone();
        rreq.exec_id = p.agent_exec_id().to_string();
        rreq.row = req.height;
        rreq.column = req.width;
        sb.agent
            .agent()
            .tty_win_resize(sb.agent.context(), &rreq)
            .map_err(|e| internal(format!("{}/{}: TtyWinResize: {e}", req.id, req.exec_id)))?;
        Ok(api::Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let (_p, sb) = self.find(&req.id, "")?;
        let mut sreq = StatsContainerRequest::new();
        sreq.container_id = req.id.clone();
        let reply = sb
            .agent
            .agent()
            .stats_container(sb.agent.context(), &sreq)
            .map_err(|e| internal(format!("container {}: StatsContainer: {e}", req.id)))?;
        let metrics = metrics_from_agent(&reply);
        let mut any = Any::new();
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        any.value = metrics
            .write_to_bytes()
            .map_err(|e| internal(format!("encode metrics: {e}")))?;
        let mut r = api::StatsResponse::new();
        r.stats = MessageField::some(any);
        Ok(r)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.find(&req.id, "").map(|(_, sb)| sb.vm_pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let st = self.lock();
        if !st.containers.is_empty() {
            log::debug!(
                "shutdown: {} containers remain; staying up",
                st.containers.len()
            );
            return Ok(api::Empty::new());
        }
        if let Some(sb) = &st.sandbox {
            for p in sb.destroy(false) {
                log::warn!("shutdown: {p}");
            }
        }
        log::info!("shutdown: no containers left; exiting");
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
