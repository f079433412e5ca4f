//! The CRI scenarios. Each is a function over a [`CriRunner`] (one runtime
//! handler) that returns what it saw or fails naming what it expected and
//! what it got. Pods are shared where the scenario does not need its own:
//! the "main" pod (a `sleep` container, hostname and DNS set) is made by
//! whichever scenario needs it first, so any subset runs on its own;
//! `teardown` stops and removes every pod of the handler and then finds
//! nothing left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, DnsConfig, ImageSpec, LinuxContainerConfig,
    LinuxContainerResources, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
};
use serde::Serialize;
use xtask::context::Ctx;

use super::client::{CriError, ExecOutput};
use super::netns::{NODE_ADDRESS, NODE_BRIDGE, POD_SUBNET};
use super::CriEnv;
use crate::e2e::bounded::{run_bounded, Running};
use crate::e2e::containerd::KATA_HANDLER;
use crate::e2e::host::{signal, tail_lines};

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// `HANDLER/NAME`.
    pub name: String,
    pub passed: bool,
    pub ms: u64,
    pub detail: String,
}

pub struct Scenario {
    pub name: &'static str,
    /// Also run with the runc handler, as a check of the harness itself.
    pub runc_control: bool,
    pub run: fn(&mut CriRunner) -> Result<String>,
}

/// In order; `teardown` runs after the others that share the main pod,
/// the self-contained ones after it.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pod-ready",
        runc_control: true,
        run: pod_ready,
    },
    Scenario {
        name: "exec-sync",
        runc_control: true,
        run: exec_sync,
    },
    Scenario {
        name: "localhost",
        runc_control: false,
        run: localhost,
    },
    Scenario {
        name: "pod-ip-in-guest",
        runc_control: false,
        run: pod_ip_in_guest,
    },
    Scenario {
        name: "network",
        runc_control: true,
        run: network,
    },
    Scenario {
        name: "hostname-dns",
        runc_control: false,
        run: hostname_dns,
    },
    Scenario {
        name: "oom-killed",
        runc_control: false,
        run: oom_killed,
    },
    Scenario {
        name: "update-resources",
        runc_control: false,
        run: update_resources,
    },
    Scenario {
        name: "unknown-sandbox",
        runc_control: true,
        run: unknown_sandbox,
    },
    Scenario {
        name: "teardown",
        runc_control: true,
        run: teardown,
    },
    // Self-contained: they make and remove their own pods, after the
    // shared ones are gone (fewer VMs at once, a clean scan to start from).
    Scenario {
        name: "three-pods",
        runc_control: false,
        run: three_pods::three_pods,
    },
    Scenario {
        name: "netns-missing",
        runc_control: false,
        run: bad_input::netns_missing,
    },
    Scenario {
        name: "non-veth-interface",
        runc_control: false,
        run: bad_input::non_veth_interface,
    },
    Scenario {
        name: "no-cni-addresses",
        runc_control: false,
        run: bad_input::no_cni_addresses,
    },
];

mod bad_input;
mod three_pods;

const MAIN_HOSTNAME: &str = "kata-cri-main";
const DNS_SERVER: &str = "10.214.0.53";
const DNS_SEARCH: &str = "cri.test";
const DNS_OPTION: &str = "ndots:2";
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server in a container gets to start listening.
const SERVER_START: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 30;

/// A pod this handler made.
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub ip: String,
}

pub struct CriRunner<'a> {
    pub ctx: &'a Ctx,
    pub env: &'a CriEnv,
    pub handler: &'static str,
    /// The main pod and its `sleep` container, once made.
    main: Option<(Pod, String)>,
    /// A second pod serving HTTP, once made (network).
    other: Option<Pod>,
    /// Containers that serve HTTP, by name, once made.
    servers: Vec<(String, String)>,
}

impl<'a> CriRunner<'a> {
    pub fn new(ctx: &'a Ctx, env: &'a CriEnv, handler: &'static str) -> CriRunner<'a> {
        CriRunner {
            ctx,
            env,
            handler,
            main: None,
            other: None,
            servers: Vec::new(),
        }
    }

    fn kata(&self) -> bool {
        self.handler == KATA_HANDLER
    }

    /// Runs one scenario, reporting it on stderr; a failure carries the
    /// containerd log tail (the shim logs through containerd).
    pub fn run(&mut self, scenario: &Scenario) -> ScenarioResult {
        let name = format!("{}/{}", self.handler, scenario.name);
        let t = Instant::now();
        let r = (scenario.run)(self);
        let ms = t.elapsed().as_millis() as u64;
        let (passed, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (
                false,
                format!(
                    "{e:#}\n--- containerd and shim log tail ({}):\n{}",
                    self.env.containerd.log.display(),
                    tail_lines(&self.env.containerd.log, LOG_TAIL_LINES)
                ),
            ),
        };
        let word = if passed { "PASS" } else { "FAIL" };
        self.ctx
            .ui
            .info(&format!("{word} {name} ({ms} ms): {detail}"));
        ScenarioResult {
            name,
            passed,
            ms,
            detail,
        }
    }

    /// Removes what is left of this handler's pods (best effort; the
    /// `teardown` scenario is the one that checks).
    pub fn finish(self) {
        let pods = std::mem::take(&mut *self.env.pods.borrow_mut());
        for pod in pods {
            let _ = self.env.client.stop_pod_sandbox(&pod);
            let _ = self.env.client.remove_pod_sandbox(&pod);
        }
    }

    fn pod_config(&self, name: &str, hostname: &str) -> PodSandboxConfig {
        let name = format!("{}-{name}", self.handler);
        let log_directory = self.env.pod_logs.join(&name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: format!("{name}-{}", std::process::id()),
                namespace: "kata-cri".into(),
                attempt: 0,
            }),
            hostname: hostname.into(),
            log_directory: log_directory.display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec![DNS_SERVER.into()],
                searches: vec![DNS_SEARCH.into()],
                options: vec![DNS_OPTION.into()],
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with this handler; READY with an address from the CNI
    /// subnet, or an error saying what was seen.
    fn run_pod(&self, name: &str, hostname: &str) -> Result<Pod> {
        let config = self.pod_config(name, hostname);
        std::fs::create_dir_all(&config.log_directory)?;
        let id = self
            .env
            .client
            .run_pod_sandbox(&config, self.handler)
            .with_context(|| format!("RunPodSandbox {name} with handler {}", self.handler))?;
        self.adopt_pod(&id);
        self.check_pod(name, id, config)
    }

    /// Remembers a pod made through any client, for the cleanup and scans.
    fn adopt_pod(&self, id: &str) {
        self.env.pods.borrow_mut().push(id.to_string());
        self.env.containerd.remember_id(id);
    }

    /// PodSandboxStatus of a pod just made: READY, this handler, an
    /// address from the CNI subnet.
    fn check_pod(&self, name: &str, id: String, config: PodSandboxConfig) -> Result<Pod> {
        let status = self.env.client.pod_sandbox_status(&id)?;
        if status.state != PodSandboxState::SandboxReady as i32 {
            bail!(
                "pod {name} ({id}): expected state SANDBOX_READY, PodSandboxStatus says {:?}",
                PodSandboxState::try_from(status.state)
            );
        }
        if status.runtime_handler != self.handler {
            bail!(
                "pod {name} ({id}): expected runtime handler {}, PodSandboxStatus says {:?}",
                self.handler,
                status.runtime_handler
            );
        }
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        if !in_pod_subnet(&ip) {
            bail!("pod {name} ({id}): expected an address in {POD_SUBNET} from CNI, PodSandboxStatus says {ip:?}");
        }
        Ok(Pod { id, config, ip })
    }

    /// CreateContainer + StartContainer of the busybox image running
    /// `command`; RUNNING, or an error saying what was seen.
    fn run_container(
        &self,
        pod: &Pod,
        name: &str,
        command: &[&str],
        resources: Option<LinuxContainerResources>,
    ) -> Result<String> {
        let id = self.create_container(pod, name, command, resources)?;
        self.wait_container(
            &id,
            ContainerState::ContainerRunning,
            Duration::from_secs(30),
        )?;
        Ok(id)
    }

    fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        command: &[&str],
        resources: Option<LinuxContainerResources>,
    ) -> Result<String> {
        let config = container_config(&self.env.image.name, name, command, resources);
        let id = self
            .env
            .client
            .create_container(&pod.id, &config, &pod.config)
            .with_context(|| format!("CreateContainer {name} in pod {}", pod.id))?;
        self.env.containerd.remember_id(&id);
        self.env
            .client
            .start_container(&id)
            .with_context(|| format!("StartContainer {name} ({id})"))?;
        Ok(id)
    }

    /// Waits for ContainerStatus to say `want`.
    fn wait_container(&self, id: &str, want: ContainerState, within: Duration) -> Result<()> {
        let t = Instant::now();
        loop {
            let s = self.env.client.container_status(id)?;
            if s.state == want as i32 {
                return Ok(());
            }
            if s.state == ContainerState::ContainerExited as i32 || t.elapsed() > within {
                bail!(
                    "container {id}: expected {want:?}, ContainerStatus says {:?} (exit code {}, reason {:?}, message {:?}) after {:?}",
                    ContainerState::try_from(s.state),
                    s.exit_code,
                    s.reason,
                    s.message,
                    t.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The main pod and its `sleep` container, made on first use.
    fn main(&mut self) -> Result<(Pod, String)> {
        if let Some(m) = &self.main {
            return Ok(m.clone());
        }
        let pod = self.run_pod("main", MAIN_HOSTNAME)?;
        let container = self.run_container(&pod, "sleeper", &["sleep", "3600"], None)?;
        self.main = Some((pod, container));
        Ok(self.main.clone().expect("set above"))
    }

    fn exec(&self, id: &str, cmd: &[&str]) -> Result<ExecOutput> {
        self.env.client.exec_sync(id, cmd, EXEC_TIMEOUT)
    }

    /// Runs `cmd` in `id` until it exits 0 printing `want` (servers take a
    /// moment to listen), or fails with the last answer.
    fn exec_until(&self, id: &str, cmd: &[&str], want: &str, within: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            let last = match self.exec(id, cmd) {
                Ok(o) if o.exit_code == 0 && o.stdout.contains(want) => return Ok(o.stdout),
                Ok(o) => o.describe(),
                Err(e) => format!("{e:#}"),
            };
            if t.elapsed() > within {
                bail!(
                    "`{}` in {id}: expected {want:?} within {within:?}, last: {last}",
                    cmd.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A container in `pod` serving `body` over HTTP on `listen`
    /// (`[IP:]PORT`), made once per name.
    fn http_server(&mut self, pod: &Pod, name: &str, listen: &str, body: &str) -> Result<String> {
        if let Some((_, id)) = self.servers.iter().find(|(n, _)| n == name) {
            return Ok(id.clone());
        }
        let script = format!(
            "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p {listen} -h /tmp/www"
        );
        let id = self.run_container(pod, name, &["sh", "-c", &script], None)?;
        self.servers.push((name.into(), id.clone()));
        Ok(id)
    }

    /// Files of pod network namespaces (`cni-*`) under containerd's state
    /// (`netns_mounts_under_state_dir`).
    fn pod_netns_files(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(&self.env.containerd.layout.state)
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("cni-"))
            .map(|e| e.into_path())
            .collect()
    }
}

/// For `bench start`: RunPodSandbox with `handler` until its first
/// container (`sleep`) is RUNNING; the pod is removed afterwards (not timed).
pub fn time_pod_start(
    ctx: &Ctx,
    env: &CriEnv,
    handler: &'static str,
    name: &str,
) -> Result<Duration> {
    let r = CriRunner::new(ctx, env, handler);
    let t = Instant::now();
    let pod = r.run_pod(name, name)?;
    let started = r.run_container(&pod, "first", &["sleep", "3600"], None);
    let took = t.elapsed();
    let stopped = env.client.stop_pod_sandbox(&pod.id);
    let removed = env.client.remove_pod_sandbox(&pod.id);
    env.pods.borrow_mut().retain(|p| *p != pod.id);
    started?;
    stopped?;
    removed?;
    Ok(took)
}

/// A container of the busybox image `image` running `command`, logging to
/// `NAME.log` in the pod's log directory.
fn container_config(
    image: &str,
    name: &str,
    command: &[&str],
    resources: Option<LinuxContainerResources>,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An HTTP GET as a shell command line for busybox: `nc` carries it
/// (Debian's static busybox `wget` crashes with SIGSEGV).
fn http_get(host: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}")
}

/// The body of an HTTP answer.
fn body(answer: &str) -> &str {
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or(answer)
        .trim()
}

fn in_pod_subnet(ip: &str) -> bool {
    match ip.parse::<std::net::Ipv4Addr>() {
        Ok(a) => {
            let o = a.octets();
            o[0] == 10 && o[1] == 214 && o[2] == 0 && o[3] > 1 && o[3] < 255
        }
        Err(_) => false,
    }
}

fn host_kernel() -> Result<String> {
    Ok(nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned())
}

// ---------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------

/// 1. RunPodSandbox → READY with a CNI address; a `sleep` container RUNNING;
///    with kata, a QEMU of ours runs.
fn pod_ready(r: &mut CriRunner) -> Result<String> {
    let (pod, container) = r.main()?;
    let s = r.env.client.container_status(&container)?;
    if s.state != ContainerState::ContainerRunning as i32 {
        bail!(
            "container {container}: expected CONTAINER_RUNNING, ContainerStatus says {:?}",
            ContainerState::try_from(s.state)
        );
    }
    let ours = r.env.containerd.our_processes();
    let programs: Vec<&str> = ours.iter().map(|p| p.program()).collect();
    if !programs.iter().any(|p| p.starts_with("containerd-shim")) {
        bail!(
            "no shim of ours runs for pod {} (ours: {programs:?})",
            pod.id
        );
    }
    if r.kata() && !programs.contains(&"qemu-system-x86_64") {
        bail!(
            "handler kata but no QEMU of ours runs for pod {} (ours: {programs:?})",
            pod.id
        );
    }
    Ok(format!(
        "pod {} READY with IP {} (handler {}), container sleeper RUNNING; processes: {}",
        &pod.id[..12.min(pod.id.len())],
        pod.ip,
        r.handler,
        programs.join(", ")
    ))
}

/// 2. ExecSync: stdout and exit code 0, stderr and a non-zero code; the
///    kernel is the guest's with kata and the host's with runc.
fn exec_sync(r: &mut CriRunner) -> Result<String> {
    let (_, c) = r.main()?;
    let out = r.exec(&c, &["echo", "hello-cri"])?;
    if out.exit_code != 0 || out.stdout != "hello-cri\n" {
        bail!(
            "`echo hello-cri`: expected exit code 0 and stdout \"hello-cri\\n\", got {}",
            out.describe()
        );
    }
    let out = r.exec(&c, &["sh", "-c", "echo oops >&2; exit 3"])?;
    if out.exit_code != 3 || out.stderr != "oops\n" || !out.stdout.is_empty() {
        bail!("`sh -c 'echo oops >&2; exit 3'`: expected exit code 3, stderr \"oops\\n\", empty stdout, got {}", out.describe());
    }
    let kernel = r.exec(&c, &["uname", "-r"])?;
    let seen = kernel.stdout.trim().to_string();
    let host = host_kernel()?;
    if r.kata() && (seen == host || kernel.exit_code != 0) {
        bail!(
            "handler kata: expected the guest's kernel, `uname -r` says {} (host {host})",
            kernel.describe()
        );
    }
    if !r.kata() && seen != host {
        bail!(
            "handler runc: expected the host kernel {host}, `uname -r` says {}",
            kernel.describe()
        );
    }
    Ok(format!(
        "echo -> exit 0 \"hello-cri\"; exit 3 with stderr \"oops\"; kernel {seen} (host {host})"
    ))
}

/// 3. Two containers of one pod talk over 127.0.0.1: they share the pod's
///    network namespace (in the guest, with kata).
fn localhost(r: &mut CriRunner) -> Result<String> {
    let (pod, c) = r.main()?;
    r.http_server(&pod, "loopback-server", "127.0.0.1:8080", "via-loopback")?;
    let got = r.exec_until(
        &c,
        &["sh", "-c", &http_get("127.0.0.1", 8080)],
        "via-loopback",
        SERVER_START,
    )?;
    Ok(format!(
        "container sleeper fetched {:?} from container loopback-server on 127.0.0.1:8080",
        body(&got)
    ))
}

/// 4. The pod's CNI address is on an interface the container sees (in the
///    guest, with kata).
fn pod_ip_in_guest(r: &mut CriRunner) -> Result<String> {
    let (pod, c) = r.main()?;
    let out = r.exec(&c, &["ip", "-o", "-4", "addr", "show"])?;
    let want = format!("inet {}/24", pod.ip);
    let line = out.stdout.lines().find(|l| l.contains(&want));
    match line {
        Some(l) if out.exit_code == 0 => Ok(format!("`ip -o -4 addr` shows {}", l.trim())),
        _ => bail!(
            "expected the pod address {want} on an interface, `ip -o -4 addr show` gives {}",
            out.describe()
        ),
    }
}

/// 5. The node (the test's netns) reaches a pod's port, a pod reaches the
///    node's bridge address, and one pod reaches another.
fn network(r: &mut CriRunner) -> Result<String> {
    let (pod, c) = r.main()?;
    let mut seen = Vec::new();
    // Node -> pod.
    r.http_server(&pod, "pod-server", "8081", "from-main-pod")?;
    let url = format!("http://{}:8081/", pod.ip);
    let t = Instant::now();
    loop {
        let out = run_bounded(
            r.env
                .netns
                .exec_command("/bin/busybox", &["sh", "-c", &http_get(&pod.ip, 8081)]),
            None,
            Duration::from_secs(15),
        )?;
        if out.success() && out.stdout.contains("from-main-pod") {
            seen.push(format!("node -> {url}: {:?}", body(&out.stdout)));
            break;
        }
        if t.elapsed() > SERVER_START {
            bail!(
                "node -> pod: expected \"from-main-pod\" from {url} in netns {}: {}",
                r.env.netns.name,
                out.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Pod -> node: a server on the bridge address, inside the test netns.
    let www = r
        .env
        .containerd
        .layout
        .dir
        .join(format!("node-www-{}", r.handler));
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "from-the-node\n")?;
    let listen = format!("{NODE_ADDRESS}:8082");
    let mut node_server = Running::spawn(
        r.env.netns.exec_command(
            "/bin/busybox",
            &[
                "httpd",
                "-f",
                "-p",
                &listen,
                "-h",
                &www.display().to_string(),
            ],
        ),
        None,
    )?;
    let fetched = r.exec_until(
        &c,
        &["sh", "-c", &http_get(NODE_ADDRESS, 8082)],
        "from-the-node",
        SERVER_START,
    );
    let _ = signal(node_server.pid(), nix::sys::signal::Signal::SIGKILL);
    let _ = node_server.is_running();
    let _ = node_server.wait(Duration::from_secs(5));
    seen.push(format!(
        "pod -> node {listen} ({NODE_BRIDGE}): {:?}",
        body(&fetched.context("pod -> node")?)
    ));
    // Pod -> pod.
    let other = match &r.other {
        Some(p) => p.clone(),
        None => {
            let p = r.run_pod("other", "kata-cri-other")?;
            r.other = Some(p.clone());
            p
        }
    };
    r.http_server(&other, "other-server", "8083", "from-other-pod")?;
    let url = format!("http://{}:8083/", other.ip);
    let fetched = r
        .exec_until(
            &c,
            &["sh", "-c", &http_get(&other.ip, 8083)],
            "from-other-pod",
            SERVER_START,
        )
        .context("pod -> pod")?;
    seen.push(format!("pod {} -> pod {url}: {:?}", pod.ip, body(&fetched)));
    Ok(seen.join("; "))
}

/// 6. Hostname and DNS from the PodSandboxConfig, as the container sees them.
fn hostname_dns(r: &mut CriRunner) -> Result<String> {
    let (_, c) = r.main()?;
    let host = r.exec(&c, &["hostname"])?;
    if host.exit_code != 0 || host.stdout.trim() != MAIN_HOSTNAME {
        bail!(
            "expected hostname {MAIN_HOSTNAME}, `hostname` gives {}",
            host.describe()
        );
    }
    let resolv = r.exec(&c, &["cat", "/etc/resolv.conf"])?;
    for want in [
        format!("nameserver {DNS_SERVER}"),
        format!("search {DNS_SEARCH}"),
        format!("options {DNS_OPTION}"),
    ] {
        if resolv.exit_code != 0 || !resolv.stdout.lines().any(|l| l.trim() == want) {
            bail!(
                "expected a line {want:?} in /etc/resolv.conf, `cat` gives {}",
                resolv.describe()
            );
        }
    }
    Ok(format!(
        "hostname {MAIN_HOSTNAME}; /etc/resolv.conf: {}",
        resolv.stdout.trim().replace('\n', " | ")
    ))
}

const OOM_LIMIT: i64 = 16 << 20;
/// Doublings of a 16-byte string: 16 MiB at the end, with the copy in
/// flight more than [`OOM_LIMIT`]; bounded, so that a limit nobody enforces
/// leaves a live container (a clear failure) rather than a guest-wide OOM.
const HOG_DOUBLINGS: u32 = 20;

/// 7. A container over its memory limit ends with reason OOMKilled.
fn oom_killed(r: &mut CriRunner) -> Result<String> {
    let (pod, _) = r.main()?;
    let resources = LinuxContainerResources {
        memory_limit_in_bytes: OOM_LIMIT,
        ..Default::default()
    };
    // The shell doubles a string past the limit; it is PID 1 of the
    // container, so its death is the container's exit. Without the limit
    // it survives, says so and sleeps.
    let script = format!(
        "x=0123456789abcdef; i=0; while [ $i -lt {HOG_DOUBLINGS} ]; do x=$x$x; i=$((i+1)); done; echo survived; sleep 3600"
    );
    let id = r.create_container(&pod, "memory-hog", &["sh", "-c", &script], Some(resources))?;
    let t = Instant::now();
    let status = loop {
        let s = r.env.client.container_status(&id)?;
        if s.state == ContainerState::ContainerExited as i32 {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = r.env.client.remove_container(&id);
            bail!(
                "container memory-hog (limit {OOM_LIMIT} bytes, allocating more) expected to end OOMKilled, still {:?} after 60 s: the limit is not enforced",
                ContainerState::try_from(s.state)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = r.env.client.remove_container(&id);
    if status.reason != "OOMKilled" {
        bail!(
            "container memory-hog (limit {OOM_LIMIT} bytes): expected reason OOMKilled, ContainerStatus says reason {:?}, exit code {}, message {:?}",
            status.reason,
            status.exit_code,
            status.message
        );
    }
    Ok(format!(
        "memory-hog over {} MiB exited {} with reason OOMKilled after {} ms",
        OOM_LIMIT >> 20,
        status.exit_code,
        t.elapsed().as_millis()
    ))
}

const UPDATED_LIMIT: i64 = 96 << 20;

/// 8. UpdateContainerResources changes the container's cgroup (in the
///    guest, with kata): memory.max (v2) or memory.limit_in_bytes (v1).
///    containerd 1.6 gives a pod container a private cgroup namespace only
///    on a cgroup v2 host; on a v1 host the kata container sees the guest's
///    whole v2 tree, so its own cgroup is found through /proc/self/cgroup.
fn update_resources(r: &mut CriRunner) -> Result<String> {
    let (_, c) = r.main()?;
    let read = [
        "sh",
        "-c",
        "own=$(sed -n 's/^0:://p' /proc/self/cgroup); \
         cat /sys/fs/cgroup$own/memory.max 2>/dev/null \
         || cat /sys/fs/cgroup/memory.max 2>/dev/null \
         || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ];
    let before = r.exec(&c, &read)?;
    r.env.client.update_container_resources(
        &c,
        LinuxContainerResources {
            memory_limit_in_bytes: UPDATED_LIMIT,
            ..Default::default()
        },
    )?;
    let after = r.exec(&c, &read)?;
    if after.exit_code != 0 || after.stdout.trim() != UPDATED_LIMIT.to_string() {
        bail!(
            "after UpdateContainerResources(memory_limit_in_bytes = {UPDATED_LIMIT}) expected the container's memory limit {UPDATED_LIMIT}; before: {}; after: {}",
            before.describe(),
            after.describe()
        );
    }
    Ok(format!(
        "memory limit {} -> {}",
        before.stdout.trim(),
        after.stdout.trim()
    ))
}

/// 10. A container naming an unknown sandbox: a clear CRI error naming it,
///     and nothing new anywhere.
fn unknown_sandbox(r: &mut CriRunner) -> Result<String> {
    let ghost = format!("{:064x}", 0xdead_0000_u64 + std::process::id() as u64);
    // A set: CRI lists in no particular order.
    let containers_before: std::collections::BTreeSet<String> =
        r.env.client.list_containers()?.into_iter().collect();
    let procs_before = r.env.containerd.our_processes().len();
    let pod = Pod {
        id: ghost.clone(),
        config: r.pod_config("ghost", "ghost"),
        ip: String::new(),
    };
    let err = match r.create_container(&pod, "orphan", &["true"], None) {
        Ok(id) => bail!("CreateContainer in unknown sandbox {ghost} succeeded (container {id})"),
        Err(e) => e,
    };
    let cri = err
        .chain()
        .find_map(|e| e.downcast_ref::<CriError>())
        .with_context(|| format!("expected a CRI error status, got: {err:#}"))?;
    if cri.code != tonic::Code::NotFound || !cri.message.contains(&ghost) {
        bail!("expected NotFound naming sandbox {ghost}, got {cri}");
    }
    let containers_after: std::collections::BTreeSet<String> =
        r.env.client.list_containers()?.into_iter().collect();
    if containers_after != containers_before {
        bail!("ListContainers changed: {containers_before:?} -> {containers_after:?}");
    }
    let procs_after = r.env.containerd.our_processes().len();
    if procs_after > procs_before {
        bail!(
            "{} new processes of ours after the refused CreateContainer",
            procs_after - procs_before
        );
    }
    Ok(format!("refused: {cri}; nothing new"))
}

/// 9. StopPodSandbox + RemovePodSandbox of every pod of this handler leave
///    no process, mount, pod netns, veth or tap, tc filter, IPAM
///    reservation, socket or state.
fn teardown(r: &mut CriRunner) -> Result<String> {
    r.main()?;
    let pods = r.env.pods.borrow().clone();
    // The scans must see the live pods, or their "nothing left" means nothing.
    let live = r.env.containerd.leftovers();
    let netns_live = r.pod_netns_files();
    let links_live = r.env.netns.links()?;
    if live.is_empty() || netns_live.len() < pods.len() || links_live.len() < 2 + pods.len() {
        bail!(
            "the scans do not see the {} live pods: leftovers {live:?}, pod netns {netns_live:?}, node links {links_live:?}",
            pods.len()
        );
    }
    let mut taps = Vec::new();
    for ns in &netns_live {
        let out = run_bounded(
            {
                let mut cmd = std::process::Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.display()))
                    .args(["ip", "-o", "link", "show"]);
                cmd
            },
            None,
            Duration::from_secs(20),
        )?;
        taps.extend(
            super::netns::parse_link_names(&out.stdout)
                .into_iter()
                .filter(|l| l.starts_with("tap")),
        );
    }
    for pod in &pods {
        r.env.client.stop_pod_sandbox(pod)?;
        let s = r.env.client.pod_sandbox_status(pod)?;
        if s.state != PodSandboxState::SandboxNotready as i32 {
            bail!(
                "pod {pod} after StopPodSandbox: expected SANDBOX_NOTREADY, PodSandboxStatus says {:?}",
                PodSandboxState::try_from(s.state)
            );
        }
        r.env.client.remove_pod_sandbox(pod)?;
        r.env.pods.borrow_mut().retain(|p| p != pod);
        match r.env.client.pod_sandbox_status(pod) {
            Err(e)
                if e.downcast_ref::<CriError>()
                    .is_some_and(|c| c.code == tonic::Code::NotFound) => {}
            other => bail!(
                "pod {pod} after RemovePodSandbox: expected NotFound from PodSandboxStatus, got {:?}",
                other.map(|s| s.state)
            ),
        }
    }
    r.main = None;
    r.other = None;
    r.servers.clear();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftovers(r, &pods)?;
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "60 s after RemovePodSandbox of {} pods, left behind:\n  {}",
                pods.len(),
                left.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(format!(
        "{} pods stopped (NOTREADY) and removed (NotFound); gone: {} leftover-scan entries, {} pod netns, {} node links beyond lo and {NODE_BRIDGE}, taps {taps:?}; no tc filter, IPAM reservation, socket or state left",
        pods.len(),
        live.len(),
        netns_live.len(),
        links_live.len() - 2,
    ))
}

/// Waits (60 s at most) until the leftover scan of `pods` finds nothing
/// beyond `before` (what the scan found before they were made).
fn leftovers_settle(
    r: &CriRunner,
    pods: &[String],
    before: &std::collections::BTreeSet<String>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = leftovers(r, pods)?
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "60 s after the removal of pods {pods:?}, left behind:\n  {}",
                left.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What is left of `pods` after their removal: the e2e scan (processes,
/// mounts under containerd's dir, pod netns mounts included, shim sockets,
/// bundles, containerd's lists) and the CRI and network side.
fn leftovers(r: &CriRunner, pods: &[String]) -> Result<Vec<String>> {
    let mut out = r.env.containerd.leftovers();
    for id in r.env.client.list_pod_sandboxes()? {
        out.push(format!("CRI still lists pod sandbox {id}"));
    }
    for id in r.env.client.list_containers()? {
        out.push(format!("CRI still lists container {id}"));
    }
    for ns in r.pod_netns_files() {
        out.push(format!(
            "pod network namespace {} still exists",
            ns.display()
        ));
    }
    for link in r.env.netns.links()? {
        if link != "lo" && link != NODE_BRIDGE {
            out.push(format!(
                "link {link} is left in the node netns {}",
                r.env.netns.name
            ));
        }
    }
    for (link, dir, filters) in r.env.netns.tc_filters()? {
        out.push(format!("tc filter left on {link} {dir}: {filters}"));
    }
    for e in std::fs::read_dir(&r.env.ipam_dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<std::net::IpAddr>().is_ok() {
            out.push(format!(
                "host-local still reserves {name} ({})",
                e.path().display()
            ));
        }
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path())?.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n.parse::<std::net::IpAddr>().is_ok() {
                    out.push(format!(
                        "host-local still reserves {n} ({})",
                        f.path().display()
                    ));
                }
            }
        }
    }
    for pod in pods {
        // The shim's monitor socket directory (design §5).
        let monitor = Path::new("/run/vc/sbs").join(pod);
        if monitor.exists() {
            out.push(format!(
                "shim monitor dir {} still exists",
                monitor.display()
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{in_pod_subnet, SCENARIOS};

    #[test]
    fn pod_addresses_must_come_from_the_test_subnet() {
        assert!(in_pod_subnet("10.214.0.7"));
        assert!(!in_pod_subnet("10.214.0.1"), "the gateway is not a pod");
        assert!(!in_pod_subnet("10.88.0.7"));
        assert!(!in_pod_subnet(""));
    }

    #[test]
    fn teardown_follows_the_shared_pod_scenarios_and_names_are_unique() {
        let teardown = SCENARIOS.iter().position(|s| s.name == "teardown").unwrap();
        for shared in [
            "pod-ready",
            "network",
            "update-resources",
            "unknown-sandbox",
        ] {
            let at = SCENARIOS.iter().position(|s| s.name == shared).unwrap();
            assert!(at < teardown, "{shared} runs before teardown");
        }
        let three = SCENARIOS
            .iter()
            .position(|s| s.name == "three-pods")
            .unwrap();
        assert!(three > teardown, "three-pods runs on an empty node");
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(!SCENARIOS[i + 1..].iter().any(|o| o.name == s.name));
        }
    }
}
