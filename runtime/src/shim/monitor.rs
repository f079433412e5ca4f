//! The shim's monitor socket: HTTP on `/run/vc/sbs/<sandbox-id>/shim-monitor.sock`,
//! upstream Kata's path, for `kata-runtime metrics` and monitoring agents.
//!
//! Endpoints (the ones this runtime implements; others are 404):
//! - `/agent-url`: where the agent listens (`hvsock:///…/vsock.sock:1024`), no
//!   trailing newline, as upstream's shim answers.
//! - `/metrics`: the shim's and the VM processes' figures from /proc, in the
//!   text format of prometheus-client (OpenMetrics text, which Prometheus
//!   and upstream's kata-monitor parse). Family names are upstream's:
//!   `kata_shim_*` for this process, `kata_hypervisor_*` for QEMU,
//!   `kata_virtiofsd_*` for virtiofsd; `kata_vsock_daemon_*` is this
//!   runtime's own, for the vhost-device-vsock daemon upstream does not run.
//! - `/direct-volume/stats?path=DEVICE` and `/direct-volume/resize` (POST or
//!   PUT, JSON): a direct-assigned volume's usage, and its online growth.
//! - `/iptables` and `/ip6tables`: GET answers the guest's rules as
//!   iptables-save (ip6tables-save) prints them; PUT hands the body, rules
//!   in iptables-restore's format, to the guest's iptables-restore and
//!   answers 200 with no body. A failure is 500 with its reason; any other
//!   method is 405 (upstream answers 501; 405 with `Allow` is what HTTP
//!   defines for a method the resource does not support).
//!
//! The server is tiny_http on its own threads; it never touches the sandbox
//! (it holds a snapshot of the pids and the agent's address), so a scrape
//! cannot block a task call. Stopping it (drop) removes the socket and the
//! sandbox's directory below `/run/vc/sbs`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::agent_client::{AgentAddress, AgentClient};

/// Where every sandbox's monitor socket directory is (upstream's
/// `GetSandboxesStoragePath`).
pub const SANDBOXES_DIR: &str = "/run/vc/sbs";
/// The socket's name in `SANDBOXES_DIR/<sandbox-id>/`.
pub const SOCKET_NAME: &str = "shim-monitor.sock";
/// How long a client waits for the shim's answer (upstream's clients: 3 s).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The monitor socket of sandbox `sid` below `root` (normally [`SANDBOXES_DIR`]).
pub fn socket_path(root: &Path, sid: &str) -> PathBuf {
    root.join(sid).join(SOCKET_NAME)
}

/// What the monitor reports on: fixed when the sandbox has started.
#[derive(Debug, Clone, Default)]
pub struct Monitored {
    /// The agent's address, as `/agent-url` answers it.
    pub agent_url: String,
    /// Where `/metrics` asks the agent for its figures (`GetMetrics`).
    pub agent: Option<AgentAddress>,
    /// QEMU's pid.
    pub hypervisor: Option<u32>,
    pub virtiofsd: Option<u32>,
    pub vsock_daemon: Option<u32>,
    /// `/direct-volume/*` act on these.
    pub volumes: Option<Arc<super::volumes::BlockVolumes>>,
}

/// A running monitor socket; dropping it stops the server and removes the
/// socket and its directory.
pub struct MonitorServer {
    /// `None` once dropped: the server's own drop wakes its accept thread
    /// through the socket, so it must run before the socket is removed.
    server: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
    root: PathBuf,
    sid: String,
}

impl MonitorServer {
    /// Serve `what` on `root/<sid>/shim-monitor.sock` (directory 0700,
    /// socket 0600). `sid` is a checked sandbox id. A socket left by a dead
    /// shim is replaced; a live one is an error (another shim serves `sid`).
    pub fn start(root: &Path, sid: &str, what: Monitored) -> std::io::Result<MonitorServer> {
        protocols::ids::check_id("sandbox id", sid).map_err(std::io::Error::other)?;
        let dir = crate::state_fs::create_below(root, Path::new(sid), 0o700)?;
        let path = dir.join(SOCKET_NAME);
        if let Err(e) = super::remove_socket_if_dead(&path) {
            return Err(std::io::Error::other(e.message));
        }
        let server = match tiny_http::Server::http_unix(&path) {
            Ok(s) => s,
            Err(e) => {
                // The directory was made (or emptied of a dead socket) for
                // this server: nothing of it stays behind.
                let _ = crate::state_fs::remove_below(root, Path::new(sid));
                return Err(std::io::Error::other(format!(
                    "listen on {}: {e}",
                    path.display()
                )));
            }
        };
        let server = Arc::new(server);
        let mut stop = MonitorServer {
            server: Some(server.clone()),
            thread: None,
            root: root.to_owned(),
            sid: sid.to_owned(),
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let what = Arc::new(what);
        let thread = std::thread::Builder::new()
            .name("shim-monitor".into())
            .spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = Vec::new();
                    let max = max_body(request.url());
                    let limit = max as u64 + 1;
                    if let Err(e) = request.as_reader().take(limit).read_to_end(&mut body) {
                        log::debug!("shim monitor: read a request body: {e}");
                    }
                    let response = if body.len() > max {
                        tiny_http::Response::from_string(format!("request body over {max} bytes\n"))
                            .with_status_code(413)
                    } else {
                        respond(request.method(), request.url(), &body, &what)
                    };
                    if let Err(e) = request.respond(response) {
                        log::debug!("shim monitor: answer: {e}");
                    }
                }
            })?;
        stop.thread = Some(thread);
        Ok(stop)
    }

    pub fn socket(&self) -> PathBuf {
        socket_path(&self.root, &self.sid)
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.unblock();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            // The last reference: tiny_http stops accepting and removes
            // the socket.
            drop(server);
        }
        let _ = std::fs::remove_file(self.socket());
        if let Err(e) = crate::state_fs::remove_below(&self.root, Path::new(&self.sid)) {
            log::warn!(
                "shim monitor: remove {}: {e}",
                self.root.join(&self.sid).display()
            );
        }
    }
}

type Body = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

/// The largest request body read (a resize request is a few dozen bytes).
const MAX_BODY: usize = 64 * 1024;

/// The largest body `url` may carry: rule sets for `/iptables` are as big
/// as the agent takes, everything else is small.
fn max_body(url: &str) -> usize {
    let path = url.split_once('?').map_or(url, |(p, _)| p);
    match path {
        "/iptables" | "/ip6tables" => protocols::MAX_IPTABLES_DATA,
        _ => MAX_BODY,
    }
}

/// How long `/iptables` waits for the agent's answer: the agent bounds
/// each iptables run to 10 s, this leaves room for the transport.
pub const IPTABLES_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Upstream's `/direct-volume/resize` body (Go field names, no json tags).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct ResizeRequest {
    #[serde(rename = "VolumePath")]
    pub volume_path: String,
    #[serde(rename = "Size")]
    pub size: u64,
}

fn respond(method: &tiny_http::Method, url: &str, body: &[u8], what: &Monitored) -> Body {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let text =
        |status: u16, body: String| tiny_http::Response::from_string(body).with_status_code(status);
    let volume_answer = |r: Result<String, super::volumes::VolumeOpError>| match r {
        Ok(body) => text(200, body),
        Err(e) => text(e.status, format!("{}\n", e.message)),
    };
    match path {
        "/direct-volume/stats" | "/direct-volume/resize" if what.volumes.is_none() => {
            text(503, "this sandbox has no volume manager\n".into())
        }
        "/direct-volume/stats" => {
            let volumes = what.volumes.as_ref().expect("checked above");
            let device = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "path")
                .map(|(_, v)| v.into_owned());
            match device {
                Some(d) if !d.is_empty() => volume_answer(volumes.stats(&d)),
                _ => text(400, "Required parameter path not found\n".into()),
            }
        }
        "/direct-volume/resize" => {
            let volumes = what.volumes.as_ref().expect("checked above");
            if *method != tiny_http::Method::Post && *method != tiny_http::Method::Put {
                return text(405, "POST {\"VolumePath\": PATH, \"Size\": BYTES}\n".into());
            }
            match serde_json::from_slice::<ResizeRequest>(body) {
                Ok(r) => volume_answer(volumes.resize(&r.volume_path, r.size).map(|()| String::new())),
                Err(e) => text(
                    400,
                    format!("resize request: {e}; expected {{\"VolumePath\": PATH, \"Size\": BYTES}}\n"),
                ),
            }
        }
        "/agent-url" => text(200, what.agent_url.clone()),
        "/metrics" => match metrics_text(what) {
            Ok(body) => text(200, body).with_header(
                tiny_http::Header::from_bytes("Content-Type", OPENMETRICS_TYPE)
                    .expect("a valid header"),
            ),
            Err(e) => text(500, format!("encode metrics: {e}\n")),
        },
        "/iptables" | "/ip6tables" => iptables(method, path == "/ip6tables", body, what),
        _ => text(
            404,
            format!("{path}: not served here; this shim serves /metrics, /agent-url, /direct-volume/stats, /direct-volume/resize, /iptables and /ip6tables\n"),
        ),
    }
}

/// `/iptables` (`/ip6tables` with `is_ipv6`): GET the guest's rules, PUT
/// new ones, both through the agent.
fn iptables(method: &tiny_http::Method, is_ipv6: bool, body: &[u8], what: &Monitored) -> Body {
    use tiny_http::Method;
    let endpoint = if is_ipv6 { "/ip6tables" } else { "/iptables" };
    let failed = |e: String| {
        tiny_http::Response::from_string(format!("{endpoint}: {e}\n")).with_status_code(500)
    };
    if *method != Method::Get && *method != Method::Put {
        return tiny_http::Response::from_string(format!(
            "{endpoint}: {method} is not supported: GET reads the guest's rules, PUT replaces them (the body in iptables-restore's format)\n"
        ))
        .with_status_code(405)
        .with_header(tiny_http::Header::from_bytes("Allow", "GET, PUT").expect("a valid header"));
    }
    let Some(address) = &what.agent else {
        return failed("this shim has no agent to ask".into());
    };
    let client = match AgentClient::connect(address, AGENT_TIMEOUT, IPTABLES_CALL_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return failed(crate::error_chain(&e)),
    };
    if *method == Method::Get {
        match client.get_ip_tables(is_ipv6) {
            Ok(rules) => tiny_http::Response::from_data(rules).with_header(
                tiny_http::Header::from_bytes("Content-Type", "text/plain; charset=utf-8")
                    .expect("a valid header"),
            ),
            Err(e) => failed(crate::error_chain(&e)),
        }
    } else {
        match client.set_ip_tables(is_ipv6, body) {
            Ok(_) => tiny_http::Response::from_data(Vec::new()),
            Err(e) => failed(crate::error_chain(&e)),
        }
    }
}

/// The `/metrics` body: one registry per scrape, filled from /proc.
pub fn metrics_text(what: &Monitored) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    register_process(&mut registry, "kata_shim", "the shim", "self");
    let daemons = [
        ("kata_hypervisor", "QEMU", what.hypervisor),
        ("kata_virtiofsd", "virtiofsd", what.virtiofsd),
        ("kata_vsock_daemon", "vhost-device-vsock", what.vsock_daemon),
    ];
    for (prefix, name, pid) in daemons {
        if let Some(pid) = pid {
            register_process(&mut registry, prefix, name, &pid.to_string());
        }
    }
    if let Some(pid) = what.hypervisor {
        register_netdev(&mut registry, &pid.to_string());
    }
    // As upstream: an agent that does not answer leaves its families out
    // (and the shim's log says why); the host's figures still come.
    if let Some(address) = &what.agent {
        match agent_metrics(address) {
            Ok(text) => {
                let mut merged = Merged::default();
                merged.add(&text, &[]);
                merged.register(&mut registry);
            }
            Err(e) => log::warn!("shim monitor: the agent's metrics: {e}"),
        }
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

type Labelled<M> = Family<Vec<(String, String)>, M>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

enum MergedFamily {
    Gauge(Labelled<FloatGauge>),
    Counter(Labelled<FloatCounter>),
}

/// Families read from Prometheus or OpenMetrics text (prometheus-parse)
/// and merged by name, for one registry: the agent's families in the
/// shim's `/metrics`, every shim's in kata-monitor's. Gauges and untyped
/// samples stay gauges, counters counters; histograms and summaries (which
/// neither the agent nor the shims report) are left out.
#[derive(Default)]
pub struct Merged {
    families: BTreeMap<String, (String, MergedFamily)>,
}

impl Merged {
    /// The samples of `text`, each with the labels `extra` added.
    pub fn add(&mut self, text: &str, extra: &[(&str, &str)]) {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
            return;
        };
        for sample in scrape.samples {
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            labels.sort();
            let (name, value, counter) = match sample.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
                    (sample.metric, v, false)
                }
                prometheus_parse::Value::Counter(v) => (
                    sample
                        .metric
                        .strip_suffix("_total")
                        .unwrap_or(&sample.metric)
                        .to_string(),
                    v,
                    true,
                ),
                _ => continue,
            };
            let help = scrape
                .docs
                .get(&name)
                .cloned()
                .unwrap_or_else(|| name.clone());
            let entry = self.families.entry(name).or_insert_with(|| {
                let family = if counter {
                    MergedFamily::Counter(Default::default())
                } else {
                    MergedFamily::Gauge(Default::default())
                };
                (help, family)
            });
            match &entry.1 {
                MergedFamily::Gauge(f) => {
                    f.get_or_create(&labels).set(value);
                }
                MergedFamily::Counter(f) => {
                    f.get_or_create(&labels).inc_by(value);
                }
            }
        }
    }

    pub fn register(self, registry: &mut Registry) {
        for (name, (help, family)) in self.families {
            // prometheus-client adds the final '.' itself.
            let help = help.strip_suffix('.').unwrap_or(&help).to_string();
            match family {
                MergedFamily::Gauge(f) => registry.register(name, help, f),
                MergedFamily::Counter(f) => registry.register(name, help, f),
            }
        }
    }
}

/// How long a scrape waits for the agent (connecting, then the call).
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

fn agent_metrics(address: &AgentAddress) -> Result<String, String> {
    let client = AgentClient::connect(address, AGENT_TIMEOUT, AGENT_TIMEOUT)
        .map_err(|e| crate::error_chain(&e))?;
    client.get_metrics().map_err(|e| crate::error_chain(&e))
}

type ItemFamily = Family<Vec<(String, String)>, Gauge>;

fn item_family<'a>(items: impl IntoIterator<Item = (&'a str, i64)>) -> ItemFamily {
    let family = ItemFamily::default();
    for (item, value) in items {
        family
            .get_or_create(&vec![("item".to_string(), item.to_string())])
            .set(value);
    }
    family
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

/// `/proc/status` lines upstream reports, as `item` values (kB → bytes for
/// the sizes; the context switches are counts).
const STATUS_ITEMS: [(&str, &str); 19] = [
    ("VmPeak", "vmpeak"),
    ("VmSize", "vmsize"),
    ("VmLck", "vmlck"),
    ("VmPin", "vmpin"),
    ("VmHWM", "vmhwm"),
    ("VmRSS", "vmrss"),
    ("RssAnon", "rssanon"),
    ("RssFile", "rssfile"),
    ("RssShmem", "rssshmem"),
    ("VmData", "vmdata"),
    ("VmStk", "vmstk"),
    ("VmExe", "vmexe"),
    ("VmLib", "vmlib"),
    ("VmPTE", "vmpte"),
    ("VmPMD", "vmpmd"),
    ("VmSwap", "vmswap"),
    ("HugetlbPages", "hugetlbpages"),
    ("voluntary_ctxt_switches", "voluntary_ctxt_switches"),
    ("nonvoluntary_ctxt_switches", "nonvoluntary_ctxt_switches"),
];

/// `/proc/<pid>/io` keys and upstream's shim item names.
const IO_ITEMS: [(&str, &str); 7] = [
    ("rchar", "rchar"),
    ("wchar", "wchar"),
    ("syscr", "syscr"),
    ("syscw", "syscw"),
    ("read_bytes", "readbytes"),
    ("write_bytes", "writebytes"),
    ("cancelled_write_bytes", "cancelledwritebytes"),
];

/// `PREFIX_threads`, `PREFIX_fds`, `PREFIX_proc_status{item}`,
/// `PREFIX_proc_stat{item}` and `PREFIX_io_stat{item}` of `/proc/<pid>`
/// (`pid` may be `self`). A process that is gone, or a file that cannot be
/// read, leaves its families out rather than reporting zeros.
fn register_process(registry: &mut Registry, prefix: &str, name: &str, pid: &str) {
    let proc_dir = Path::new("/proc").join(pid);
    if let Ok(status) = std::fs::read_to_string(proc_dir.join("status")) {
        let fields = parse_status(&status);
        if let Some(threads) = fields.iter().find(|(k, _)| *k == "Threads") {
            registry.register(
                format!("{prefix}_threads"),
                format!("Threads of {name}"),
                gauge(threads.1),
            );
        }
        let items = STATUS_ITEMS.iter().filter_map(|(key, item)| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| (*item, *v))
        });
        registry.register(
            format!("{prefix}_proc_status"),
            format!("/proc/<pid>/status of {name} (sizes in bytes)"),
            item_family(items),
        );
    }
    if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) {
        registry.register(
            format!("{prefix}_fds"),
            format!("Open file descriptors of {name}"),
            gauge(fds.count() as i64),
        );
    }
    if let Some(times) = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| parse_stat_times(&s))
    {
        let items = ["utime", "stime", "cutime", "cstime"]
            .into_iter()
            .zip(times);
        registry.register(
            format!("{prefix}_proc_stat"),
            format!("CPU time of {name} from /proc/<pid>/stat, in clock ticks"),
            item_family(items),
        );
    }
    if let Ok(io) = std::fs::read_to_string(proc_dir.join("io")) {
        let fields = parse_status(&io);
        let items = IO_ITEMS.iter().filter_map(|(key, item)| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| (*item, *v))
        });
        registry.register(
            format!("{prefix}_io_stat"),
            format!("/proc/<pid>/io of {name}"),
            item_family(items),
        );
    }
}

/// `kata_hypervisor_netdev{interface,item}`: `/proc/<qemu>/net/dev`, the
/// counters of the network namespace QEMU runs in (the pod's, with taps).
fn register_netdev(registry: &mut Registry, pid: &str) {
    let Ok(text) = std::fs::read_to_string(Path::new("/proc").join(pid).join("net/dev")) else {
        return;
    };
    let family = ItemFamily::default();
    for (interface, values) in parse_netdev(&text) {
        for (item, value) in protocols::metrics::NETDEV_ITEMS.iter().zip(values) {
            family
                .get_or_create(&vec![
                    ("interface".to_string(), interface.clone()),
                    ("item".to_string(), item.to_string()),
                ])
                .set(value);
        }
    }
    registry.register(
        "kata_hypervisor_netdev",
        "/proc/<qemu>/net/dev: the network devices of QEMU's network namespace",
        family,
    );
}

/// `Key: value [kB]` lines; kB values in bytes.
fn parse_status(text: &str) -> Vec<(&str, i64)> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace();
            let value: i64 = words.next()?.parse().ok()?;
            let scale = if words.next() == Some("kB") { 1024 } else { 1 };
            Some((key.trim(), value.saturating_mul(scale)))
        })
        .collect()
}

/// utime, stime, cutime and cstime (fields 14–17) of a `/proc/<pid>/stat`
/// line; the command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn parse_stat_times(line: &str) -> Option<[i64; 4]> {
    let after = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field N is fields[N - 3].
    let get = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    Some([get(14)?, get(15)?, get(16)?, get(17)?])
}

/// Interface name and its 16 counters, per `/proc/net/dev` data line.
fn parse_netdev(text: &str) -> Vec<(String, Vec<i64>)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let values: Vec<i64> = counters
                .split_whitespace()
                .map(|v| v.parse::<i64>().unwrap_or(0))
                .collect();
            (values.len() == 16).then(|| (name.trim().to_string(), values))
        })
        .collect()
}

/// An HTTP GET of `path` on the monitor socket `socket`: the status and the
/// body.
pub fn get(socket: &Path, path: &str) -> Result<(u16, String), String> {
    send(socket, "GET", path, None, CLIENT_TIMEOUT)
}

/// An HTTP/1.0 GET of `path` over a connected stream (its timeouts set).
/// No crate offers a synchronous HTTP client over a
/// unix socket, so the request is the one fixed line upstream's client
/// sends, and the answer is parsed by httparse (hyper's parser); the server
/// closing the connection ends the body.
pub fn get_over(stream: impl Read + Write, path: &str) -> Result<(u16, String), String> {
    request_over(stream, "GET", path, None)
}

/// `method path` with a JSON `body` to the shim of `socket`, waiting up to
/// `timeout` for the answer (a volume resize takes longer than a scrape).
pub fn send_json(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), String> {
    send(
        socket,
        method,
        path,
        Some(("application/json", body)),
        timeout,
    )
}

/// `method path` to the shim of `socket`, with `body` (its content type
/// and bytes) if any, waiting up to `timeout` for the answer.
pub fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    let io = |e: std::io::Error| format!("{}: {method} {path}: {e}", socket.display());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    request_over(stream, method, path, body).map_err(|e| format!("{}: {e}", socket.display()))
}

/// One HTTP/1.0 request over a connected stream; `body` is its content
/// type and bytes.
pub fn request_over(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<(u16, String), String> {
    let io = |e: std::io::Error| format!("{method} {path}: {e}");
    // HTTP/1.0: the answer is the bytes up to the close, never chunked
    // (tiny_http chunks long HTTP/1.1 bodies).
    match body {
        None => write!(stream, "{method} {path} HTTP/1.0\r\nHost: shim\r\n\r\n").map_err(io)?,
        Some((content_type, bytes)) => {
            write!(
                stream,
                "{method} {path} HTTP/1.0\r\nHost: shim\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            )
            .map_err(io)?;
            stream.write_all(bytes).map_err(io)?;
        }
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(format!("{method} {path}: the answer ended early"))
        }
        Err(e) => return Err(format!("{method} {path}: not an HTTP answer: {e}")),
    };
    let status = response.code.unwrap_or(0);
    if response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && !h.value.eq_ignore_ascii_case(b"identity")
    }) {
        return Err(format!(
            "{method} {path}: the answer has a transfer encoding, which this client does not read"
        ));
    }
    let mut body = &raw[head..];
    if let Some(len) = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
    {
        body = &body[..len.min(body.len())];
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_pids() -> Monitored {
        let me = std::process::id();
        Monitored {
            agent_url: "hvsock:///run/kata-containers/s1/vsock.sock:1024".into(),
            agent: None,
            hypervisor: Some(me),
            virtiofsd: None,
            vsock_daemon: Some(me),
            volumes: None,
        }
    }

    /// The value of the sample `name{labels}` in a text exposition.
    fn sample(text: &str, series: &str) -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_report_the_processes_by_upstreams_family_names() {
        let text = metrics_text(&own_pids()).unwrap();
        let rss = sample(&text, "kata_shim_proc_status{item=\"vmrss\"}").expect(&text);
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(sample(&text, "kata_shim_threads").unwrap() >= 1);
        assert!(sample(&text, "kata_shim_fds").unwrap() >= 3);
        assert!(sample(&text, "kata_hypervisor_proc_stat{item=\"utime\"}").is_some());
        assert!(sample(&text, "kata_hypervisor_io_stat{item=\"rchar\"}").unwrap() > 0);
        assert!(sample(&text, "kata_vsock_daemon_threads").is_some());
        assert!(
            text.contains("kata_hypervisor_netdev{interface=\"lo\",item=\"recv_bytes\"}"),
            "{text}"
        );
        // No virtiofsd pid: no family, rather than zeros.
        assert!(!text.contains("kata_virtiofsd"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_agents_text_merges_into_the_registry() {
        // What the agent's GetMetrics answers: format 0.0.4, a counter
        // without `_total`.
        let agent = "# HELP kata_agent_scrape_count Metrics scrapes of the agent.\n# TYPE kata_agent_scrape_count counter\nkata_agent_scrape_count 3\n\
                     # HELP kata_guest_meminfo Guest memory.\n# TYPE kata_guest_meminfo gauge\nkata_guest_meminfo{item=\"mem_total\"} 2048\n";
        let mut registry = Registry::default();
        let mut merged = Merged::default();
        merged.add(agent, &[]);
        merged.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE kata_agent_scrape_count counter\n"),
            "{text}"
        );
        assert!(
            text.contains("kata_agent_scrape_count_total 3.0\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kata_guest_meminfo Guest memory.\n"),
            "{text}"
        );
        assert!(
            text.contains("kata_guest_meminfo{item=\"mem_total\"} 2048"),
            "{text}"
        );
    }

    #[test]
    fn a_process_that_is_gone_has_no_figures() {
        let gone = Monitored {
            hypervisor: Some(u32::MAX - 1),
            ..Default::default()
        };
        let text = metrics_text(&gone).unwrap();
        assert!(!text.contains("kata_hypervisor"), "{text}");
        assert!(text.contains("kata_shim_threads"));
    }

    #[test]
    fn proc_files_parse_as_the_kernel_writes_them() {
        let status = "Name:\tqemu\nVmRSS:\t  2048 kB\nThreads:\t5\nvoluntary_ctxt_switches:\t7\n";
        assert_eq!(
            parse_status(status),
            vec![
                ("VmRSS", 2048 * 1024),
                ("Threads", 5),
                ("voluntary_ctxt_switches", 7)
            ]
        );
        // A command name with spaces and a ')' must not shift the fields.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 11 12 13 14 20 0 1 0";
        assert_eq!(parse_stat_times(stat), Some([11, 12, 13, 14]));
        let netdev = "Inter-|   Receive\n face |bytes\n  lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\nbad: 1 2\n";
        assert_eq!(
            parse_netdev(netdev),
            vec![("lo".to_string(), (1..=16).collect())]
        );
    }

    #[test]
    fn the_socket_serves_the_endpoints_and_goes_with_the_server() {
        let root = tempfile::tempdir().unwrap();
        let server = MonitorServer::start(root.path(), "s1", own_pids()).unwrap();
        let socket = socket_path(root.path(), "s1");
        assert_eq!(server.socket(), socket);
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(root.path().join("s1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);

        let (status, url) = get(&socket, "/agent-url").unwrap();
        assert_eq!(
            (status, url.as_str()),
            (200, "hvsock:///run/kata-containers/s1/vsock.sock:1024")
        );
        let (status, text) = get(&socket, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(sample(&text, "kata_shim_threads").unwrap() >= 2, "{text}");
        let (status, body) = get(&socket, "/nope?x=1").unwrap();
        assert_eq!(status, 404);
        assert!(body.contains("/nope: not served here"), "{body}");

        // A second shim for the same sandbox is refused while this one serves.
        let err = MonitorServer::start(root.path(), "s1", own_pids())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("still accepts connections"),
            "{err}"
        );

        drop(server);
        assert!(!root.path().join("s1").exists());
        let err = get(&socket, "/metrics").unwrap_err();
        assert!(err.contains("connect to"), "{err}");
    }

    #[test]
    fn a_long_answer_arrives_whole() {
        // tiny_http chunks long HTTP/1.1 bodies (a shim's /metrics with the
        // agent's families is ~60 KB): the client must get plain bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let server = tiny_http::Server::http_unix(&path).unwrap();
        let body = format!("{}END", "x".repeat(200_000));
        let sent = body.clone();
        let t = std::thread::spawn(move || {
            let request = server.recv().unwrap();
            request
                .respond(tiny_http::Response::from_string(sent))
                .unwrap();
        });
        let (status, got) = get(&path, "/metrics").unwrap();
        t.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(got.len(), body.len());
        assert!(got.ends_with("xEND"));
    }

    #[test]
    fn a_socket_left_by_a_dead_shim_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("s2")).unwrap();
        let path = socket_path(root.path(), "s2");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = MonitorServer::start(root.path(), "s2", own_pids()).unwrap();
        assert_eq!(get(&path, "/agent-url").unwrap().0, 200);
        drop(server);
    }

    fn body_of(r: Body) -> String {
        let mut text = String::new();
        r.into_reader().read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn iptables_takes_get_and_put_only_and_says_when_no_agent_is_known() {
        use tiny_http::Method;
        let what = own_pids();
        assert!(what.agent.is_none());
        for (method, url) in [(Method::Get, "/iptables"), (Method::Put, "/ip6tables")] {
            let r = respond(&method, url, b"*filter\nCOMMIT\n", &what);
            assert_eq!(r.status_code().0, 500);
            assert_eq!(
                body_of(r),
                format!("{url}: this shim has no agent to ask\n")
            );
        }
        for method in [Method::Post, Method::Delete, Method::Head, Method::Patch] {
            let r = respond(&method, "/iptables?x=1", b"", &what);
            assert_eq!(r.status_code().0, 405, "{method}");
            assert!(
                r.headers()
                    .iter()
                    .any(|h| h.field.equiv("Allow") && h.value.as_str() == "GET, PUT"),
                "{method}"
            );
            let body = body_of(r);
            assert!(
                body.starts_with(&format!("/iptables: {method} is not supported: GET reads")),
                "{body}"
            );
        }
        assert_eq!(max_body("/ip6tables"), protocols::MAX_IPTABLES_DATA);
        assert_eq!(max_body("/iptables?v=1"), protocols::MAX_IPTABLES_DATA);
        assert_eq!(max_body("/direct-volume/resize"), MAX_BODY);
    }

    /// An agent whose rules are whatever it was last given.
    #[derive(Default)]
    struct RulesAgent {
        rules: std::sync::Mutex<[Vec<u8>; 2]>,
    }

    impl protocols::agent_ttrpc::AgentService for RulesAgent {
        fn get_ip_tables(
            &self,
            _: &ttrpc::TtrpcContext,
            req: protocols::agent::GetIPTablesRequest,
        ) -> ttrpc::Result<protocols::agent::GetIPTablesResponse> {
            let mut r = protocols::agent::GetIPTablesResponse::new();
            r.data = self.rules.lock().unwrap()[req.is_ipv6 as usize].clone();
            Ok(r)
        }

        fn set_ip_tables(
            &self,
            _: &ttrpc::TtrpcContext,
            req: protocols::agent::SetIPTablesRequest,
        ) -> ttrpc::Result<protocols::agent::SetIPTablesResponse> {
            if req.data.starts_with(b"bad") {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INTERNAL,
                    "SetIPTables: iptables-restore rejected line 1 of the rules",
                )));
            }
            self.rules.lock().unwrap()[req.is_ipv6 as usize] = req.data;
            let mut r = protocols::agent::SetIPTablesResponse::new();
            r.data = b"ignored".to_vec();
            Ok(r)
        }
    }

    #[test]
    fn iptables_reaches_the_agent_both_ways() {
        let root = tempfile::tempdir().unwrap();
        let agent_socket = root.path().join("agent.sock");
        let mut agent = ttrpc::Server::new()
            .bind(&format!("unix://{}", agent_socket.display()))
            .unwrap()
            .register_service(protocols::agent_ttrpc::create_agent_service(Arc::new(
                RulesAgent::default(),
            )));
        agent.start().unwrap();
        let what = Monitored {
            agent: Some(AgentAddress::Unix(agent_socket)),
            ..own_pids()
        };
        let server = MonitorServer::start(root.path(), "ipt", what).unwrap();
        let socket = server.socket();
        let put = |path: &str, body: &[u8]| {
            send(
                &socket,
                "PUT",
                path,
                Some(("application/octet-stream", body)),
                Duration::from_secs(10),
            )
            .unwrap()
        };
        // bigger than the other endpoints' bodies may be
        let rules = format!("*filter\n{}COMMIT\n", "-A INPUT -j ACCEPT\n".repeat(5000));
        assert_eq!(put("/ip6tables", rules.as_bytes()), (200, String::new()));
        assert_eq!(get(&socket, "/ip6tables").unwrap(), (200, rules));
        assert_eq!(get(&socket, "/iptables").unwrap(), (200, String::new()));
        let (status, body) = put("/iptables", b"bad rules");
        assert_eq!(status, 500);
        assert!(
            body.starts_with("/iptables: agent call SetIPTables failed: status INTERNAL: SetIPTables: iptables-restore rejected line 1"),
            "{body}"
        );
        let (status, body) = put("/iptables", &vec![b'#'; protocols::MAX_IPTABLES_DATA + 1]);
        assert_eq!(status, 413);
        assert_eq!(
            body,
            format!("request body over {} bytes\n", protocols::MAX_IPTABLES_DATA)
        );
        drop(server);
        agent.shutdown();
    }

    #[test]
    fn a_socket_that_cannot_be_bound_leaves_no_directory() {
        // A unix socket path is at most 107 bytes: this one cannot be bound.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r".repeat(100));
        std::fs::create_dir(&root).unwrap();
        let err = MonitorServer::start(&root, "s3", own_pids()).err().unwrap();
        assert!(err.to_string().contains("listen on"), "{err}");
        assert!(!root.join("s3").exists());
    }

    #[test]
    fn a_bad_sandbox_id_creates_nothing() {
        let root = tempfile::tempdir().unwrap();
        assert!(MonitorServer::start(root.path(), "../x", own_pids()).is_err());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
