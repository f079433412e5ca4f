//! The pod network scenario (`internetworking_model = "tcfilter"`): a
//! "node" and a "pod" network namespace made by the test, a veth between
//! them, a container joining the pod namespace; traffic only ever flows
//! between these two namespaces.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::bounded::run_bounded;
use super::scenarios::{kill_and_delete, leftovers_now, Runner};

/// Prefix of the namespaces this harness makes:
/// `kata-e2e-{node,pod}-<pid>-<container>`. The leftover scan looks for
/// taps and tc filters in those of this run's pid only: another run on the
/// host, or one killed before its cleanup, is not this run's leftover.
pub const NETNS_PREFIX: &str = "kata-e2e-";
/// The CRI harness's namespace: `kata-cri-<pid>`.
pub const CRI_NETNS_PREFIX: &str = "kata-cri-";
const NETNS_DIR: &str = "/var/run/netns";
const LISTEN_PORT: u16 = 8080;
const GREETING: &str = "hello-from-the-pod";

/// A node and a pod namespace joined by a veth, deleted on drop.
struct PodNet {
    node: String,
    pod: String,
    node_ip: String,
    pod_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl PodNet {
    fn create(tag: &str) -> Result<PodNet> {
        // A per-run subnet: two runs on one host must not share addresses.
        let subnet = std::process::id() % 250 + 1;
        let net = PodNet {
            node: format!("{NETNS_PREFIX}node-{tag}"),
            pod: format!("{NETNS_PREFIX}pod-{tag}"),
            node_ip: format!("10.213.{subnet}.1"),
            pod_ip: format!("10.213.{subnet}.2"),
        };
        ip(&["netns", "add", &net.node])?;
        // From here on, drop deletes what exists.
        ip(&["netns", "add", &net.pod])?;
        let veth = format!("kn{subnet}");
        ip(&[
            "-n", &net.node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &net.pod,
        ])?;
        ip(&[
            "-n",
            &net.node,
            "addr",
            "add",
            &format!("{}/24", net.node_ip),
            "dev",
            &veth,
        ])?;
        ip(&[
            "-n",
            &net.pod,
            "addr",
            "add",
            &format!("{}/24", net.pod_ip),
            "dev",
            "eth0",
        ])?;
        for (ns, dev) in [
            (&net.node, veth.as_str()),
            (&net.pod, "eth0"),
            (&net.node, "lo"),
            (&net.pod, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&[
            "-n",
            &net.pod,
            "route",
            "add",
            "default",
            "via",
            &net.node_ip,
        ])?;
        Ok(net)
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(name)
    }

    /// Container `id` running `script` (a listener on LISTEN_PORT) in the
    /// pod namespace, RUNNING.
    fn start_listener(&self, r: &Runner, id: &str, script: &str) -> Result<()> {
        let ns_flag = format!("network:{}", Self::path(&self.pod).display());
        r.run(
            id,
            &["-d", "--with-ns", &ns_flag],
            &["sh", "-c", script],
            None,
        )?
        .require_success()?;
        r.ctr()
            .wait_task_status(id, "RUNNING", Duration::from_secs(60))
    }

    /// Connect from the node namespace to the container's listener and
    /// read what it sends, retrying until `within` (the container may
    /// not listen yet).
    fn read_from_pod(&self, within: Duration) -> Result<String> {
        let target: SocketAddr = format!("{}:{LISTEN_PORT}", self.pod_ip).parse()?;
        let deadline = Instant::now() + within;
        loop {
            let attempt =
                rtnl::in_netns(&Self::path(&self.node), || -> std::io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut text = String::new();
                    s.read_to_string(&mut text)?;
                    Ok(text)
                })?;
            match attempt {
                Ok(text) if !text.is_empty() => return Ok(text),
                Ok(_) if Instant::now() > deadline => {
                    bail!("{target} from the node namespace: connected, read nothing")
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("{target} from the node namespace: {e}")
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node] {
            let _ = ip(&["netns", "delete", ns]);
        }
    }
}

/// The pid of the test run that named a namespace, for the names the e2e
/// and CRI harnesses give; `None` for any other name.
pub fn creator_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(NETNS_PREFIX) {
        let rest = rest
            .strip_prefix("node-")
            .or_else(|| rest.strip_prefix("pod-"))?;
        let (pid, container) = rest.split_once('-')?;
        if container.is_empty() {
            return None;
        }
        return pid.parse().ok();
    }
    name.strip_prefix(CRI_NETNS_PREFIX)?.parse().ok()
}

/// Deletes the namespaces named by test runs whose process is gone: a run
/// killed before its cleanup (CI timeout, SIGKILL) leaves them, with the
/// taps and filters in them, and nothing else would ever remove them.
/// Returns one line per namespace removed, or failed to remove.
pub fn remove_dead_runs_netns() -> Vec<String> {
    let mut said = Vec::new();
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return said;
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        said.push(match ip(&["netns", "delete", &name]) {
            Ok(()) => format!("removed netns {name}, left by test run {pid}, which is gone"),
            Err(e) => format!("netns {name} is left by test run {pid}, which is gone: {e:#}"),
        });
    }
    said
}

/// Taps and ingress filters left in the namespaces this run made.
pub fn network_leftovers() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return out;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(NETNS_PREFIX) || creator_pid(&name) != Some(me) {
            continue;
        }
        let found = rtnl::in_netns(&entry.path(), || -> rtnl::Result<Vec<String>> {
            let mut nl = rtnl::Netlink::open()?;
            let mut left = Vec::new();
            for link in nl.links()? {
                if link.name.ends_with("_kata") {
                    left.push(format!("tap {} is still in netns {name}", link.name));
                }
                let filters = nl.ingress_filters(link.index)?;
                if !filters.is_empty() {
                    left.push(format!(
                        "tc ingress filters {filters:?} are still on {} in netns {name}",
                        link.name
                    ));
                }
            }
            Ok(left)
        });
        match found {
            Ok(Ok(left)) => out.extend(left),
            Ok(Err(e)) => out.push(format!("netns {name}: {e}")),
            Err(e) => out.push(format!("netns {name}: {e}")),
        }
    }
    out
}

/// A container in the pod namespace: its address is on a guest interface,
/// it reaches the node, the node reaches its listener; after delete no
/// tap, filter or process is left.
pub(super) fn scenario_pod_network(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let net = PodNet::create(&format!("{}-{id}", std::process::id()))?;
    net.start_listener(
        r,
        id,
        &format!("echo {GREETING} | nc -l -p {LISTEN_PORT}; sleep 600"),
    )?;
    let ctr = r.ctr();

    let exec = |exec_id: &str, script: &str| {
        run_bounded(
            ctr.exec_command(id, exec_id, &["sh", "-c", script]),
            None,
            r.timeout,
        )
        .and_then(|o| o.require_success())
    };
    let addrs = exec("addr", "ip -o addr show")?;
    let line = addrs
        .stdout
        .lines()
        .find(|l| l.contains(&format!("inet {}/24", net.pod_ip)))
        .with_context(|| {
            format!(
                "the container does not see {}/24: {}",
                net.pod_ip, addrs.stdout
            )
        })?
        .to_string();
    if r.kata() {
        let tap_up = rtnl::in_netns(&PodNet::path(&net.pod), || {
            rtnl::Netlink::open().and_then(|mut nl| nl.link_by_name("tap0_kata"))
        })?;
        tap_up.context("no tap0_kata in the pod namespace while the sandbox runs")?;
    }
    exec("ping", &format!("ping -c 1 -W 10 {}", net.node_ip))
        .with_context(|| format!("the container does not reach the node at {}", net.node_ip))?;
    let got = net.read_from_pod(Duration::from_secs(60))?;
    if got.trim() != GREETING {
        bail!("the container's listener sent {got:?}, expected {GREETING}");
    }
    kill_and_delete(r, id)?;
    leftovers_now(&r.env.containerd)?;
    let left = network_leftovers();
    if !left.is_empty() {
        bail!(
            "left behind in the test's namespaces:\n  {}",
            left.join("\n  ")
        );
    }
    Ok(format!(
        "pod {}: the container sees `{}`, pings the node {}, the node read {GREETING:?} from {}:{LISTEN_PORT}; \
         after delete no tap, tc filter or process left",
        net.pod,
        line.trim(),
        net.node_ip,
        net.pod_ip
    ))
}

/// `kata-runtime iptables` against a pod with a network: a rule set
/// through `set` makes the guest refuse the pod's port to the node, `get`
/// shows it, and a malformed rule file is refused without touching the
/// rules in force.
pub(super) fn scenario_iptables(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let kata_runtime = super::scenarios::kata_runtime_binary(r)?;
    let net = PodNet::create(&format!("{}-{id}", std::process::id()))?;
    // busybox nc serves one connection: serve again until killed.
    net.start_listener(
        r,
        id,
        &format!("while true; do echo {GREETING} | nc -l -p {LISTEN_PORT}; done"),
    )?;
    let got = net.read_from_pod(Duration::from_secs(60))?;
    if got.trim() != GREETING {
        bail!("before any rule, the container's listener sent {got:?}");
    }
    let tool = |args: &[&str]| -> Result<super::bounded::Outcome> {
        let mut cmd = Command::new(&kata_runtime);
        cmd.arg("iptables").args(args);
        run_bounded(cmd, None, r.timeout)
    };
    let files = tempfile::Builder::new()
        .prefix("kata-e2e-iptables-")
        .tempdir_in("/tmp")?;
    let rules = files.path().join("rules");
    std::fs::write(
        &rules,
        format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A INPUT -p tcp -m tcp --dport {LISTEN_PORT} -j REJECT --reject-with tcp-reset\n\
             COMMIT\n"
        ),
    )?;
    tool(&["set", "--sandbox-id", id, &rules.to_string_lossy()])?.require_success()?;
    let shown = tool(&["get", "--sandbox-id", id])?
        .require_success()?
        .stdout;
    let rule = shown
        .lines()
        .find(|l| l.contains(&format!("--dport {LISTEN_PORT}")) && l.contains("REJECT"))
        .with_context(|| format!("iptables get does not show the rule that was set:\n{shown}"))?
        .trim()
        .to_string();
    // The node's connection is now refused by the guest.
    let target: SocketAddr = format!("{}:{LISTEN_PORT}", net.pod_ip).parse()?;
    let refused = rtnl::in_netns(&PodNet::path(&net.node), || {
        TcpStream::connect_timeout(&target, Duration::from_secs(10)).map(drop)
    })?;
    match refused {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!(
            "with `{rule}` set, connecting from the node to {target} gave {other:?}, not connection refused"
        ),
    }
    // IPv6 goes to ip6tables, and stays apart from the IPv4 rules.
    let rules6 = files.path().join("rules6");
    std::fs::write(
        &rules6,
        format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A INPUT -p tcp -m tcp --dport {} -j DROP\nCOMMIT\n",
            LISTEN_PORT + 1
        ),
    )?;
    tool(&["set", "--v6", "--sandbox-id", id, &rules6.to_string_lossy()])?.require_success()?;
    let shown6 = tool(&["get", "--v6", "--sandbox-id", id])?
        .require_success()?
        .stdout;
    let dport6 = format!("--dport {}", LISTEN_PORT + 1);
    if !shown6.contains(&dport6) || shown6.contains(&format!("--dport {LISTEN_PORT} ")) {
        bail!("iptables get --v6 does not show only the IPv6 rule:\n{shown6}");
    }
    if tool(&["get", "--sandbox-id", id])?
        .require_success()?
        .stdout
        .contains(&dport6)
    {
        bail!("the IPv6 rule shows up in the IPv4 rules");
    }
    // Bad input: nothing changes in the guest.
    let garbage = files.path().join("garbage");
    std::fs::write(&garbage, "*filter\n-A NOCHAIN -j ACCEPT\nCOMMIT\n")?;
    let bad = tool(&["set", "--sandbox-id", id, &garbage.to_string_lossy()])?;
    if bad.code != Some(1) || bad.stderr.trim().is_empty() {
        bail!(
            "iptables set of a malformed file: expected exit 1 with the guest's error, got {}",
            bad.describe()
        );
    }
    let after = tool(&["get", "--sandbox-id", id])?
        .require_success()?
        .stdout;
    if !after.contains(&rule) {
        bail!("after a refused set, the rule in force is gone:\n{after}");
    }
    let missing = files.path().join("no-such-file");
    let no_file = tool(&["set", "--sandbox-id", id, &missing.to_string_lossy()])?;
    if no_file.code != Some(2) {
        bail!(
            "iptables set of a missing file: expected exit 2, got {}",
            no_file.describe()
        );
    }
    let unknown = tool(&[
        "get",
        "--sandbox-id",
        &format!("nosuch{}", std::process::id()),
    ])?;
    if unknown.code != Some(1) {
        bail!(
            "iptables get of an unknown sandbox: expected exit 1, got {}",
            unknown.describe()
        );
    }
    kill_and_delete(r, id)?;
    leftovers_now(&r.env.containerd)?;
    Ok(format!(
        "set `{rule}`: the node's connection to {target} refused; get shows it; --v6 set and get ip6tables apart; a malformed file refused (exit 1: {}) with the rule kept; a missing file exit 2, an unknown sandbox exit 1",
        bad.stderr.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn the_run_that_named_a_namespace_is_read_from_its_name() {
        assert_eq!(creator_pid("kata-e2e-pod-24858-e2e-24858-net"), Some(24858));
        assert_eq!(creator_pid("kata-e2e-node-7-e2e-7-net"), Some(7));
        assert_eq!(creator_pid("kata-cri-4242"), Some(4242));
        // Not ours, or not in the form we give: never touched.
        assert_eq!(creator_pid("kata-e2e-pod-24858"), None);
        assert_eq!(creator_pid("kata-e2e-pod-x-e2e"), None);
        assert_eq!(creator_pid("kata-e2e-other-1-a"), None);
        assert_eq!(creator_pid("kata-cri-main"), None);
        assert_eq!(creator_pid("cni-1234"), None);
    }
}
