//! `three-pods`: three kata pods started at once (one thread and one CRI
//! connection each), all RUNNING together; each has its own vsock guest
//! CID, its own pod netns with its own tap, its CNI address on a guest
//! interface; they reach each other over HTTP; after their removal the
//! leftover scan finds nothing new.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_cri::v1::{ContainerState, PodSandboxConfig};

use super::{
    container_config, host_kernel, http_get, leftovers_settle, CriRunner, Pod, SERVER_START,
};
use crate::cri::client::CriClient;

const PODS: usize = 3;
const PORT: u16 = 8085;
/// Three VMs booting at once share 2 cores (TCG when there is no KVM).
const ALL_RUNNING: Duration = Duration::from_secs(180);

/// What one starter thread got: the ids it made (for cleanup even after a
/// failure), when its RunPodSandbox call ran, and its error.
#[derive(Default)]
struct Started {
    pod: Option<String>,
    container: Option<String>,
    run_call: Option<(Instant, Instant)>,
    error: Option<anyhow::Error>,
}

fn server_script(body: &str) -> String {
    format!("mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www")
}

/// One pod and its HTTP server container, through its own CRI connection.
fn start_one(
    socket: &Path,
    slow: Duration,
    handler: &str,
    image: &str,
    name: &str,
    config: &PodSandboxConfig,
) -> Started {
    let mut st = Started::default();
    let r = (|| -> Result<()> {
        let client = CriClient::connect(socket, slow)?;
        let t = Instant::now();
        let id = client
            .run_pod_sandbox(config, handler)
            .with_context(|| format!("RunPodSandbox {name} with handler {handler}"))?;
        st.run_call = Some((t, Instant::now()));
        st.pod = Some(id.clone());
        let script = server_script(&format!("from-{name}"));
        let cfg = container_config(image, "server", &["sh", "-c", &script], None);
        let c = client
            .create_container(&id, &cfg, config)
            .with_context(|| format!("CreateContainer server in pod {name} ({id})"))?;
        st.container = Some(c.clone());
        client
            .start_container(&c)
            .with_context(|| format!("StartContainer server ({c}) in pod {name}"))?;
        Ok(())
    })();
    st.error = r.err();
    st
}

/// The guest CID on a vsock command line: `vhost-device-vsock --guest-cid
/// N` or QEMU's `-device vhost-vsock-pci,...,guest-cid=N`.
pub(super) fn guest_cid(argv: &[String]) -> Option<u32> {
    let mut words = argv.iter();
    while let Some(w) = words.next() {
        if w == "--guest-cid" {
            return words.next()?.parse().ok();
        }
        if let Some(v) = w.strip_prefix("--guest-cid=") {
            return v.parse().ok();
        }
        if let Some(v) = w
            .split(',')
            .find_map(|part| part.strip_prefix("guest-cid="))
        {
            return v.parse().ok();
        }
    }
    None
}

/// The network namespace path of a pod from containerd's verbose
/// PodSandboxStatus info (its runtime spec).
pub(super) fn netns_path(info: &serde_json::Value) -> Option<PathBuf> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// In the pod's netns: (veths, taps with their ingress filters).
type PodLinks = (Vec<String>, Vec<(String, Vec<String>)>);

fn pod_links(netns: &Path) -> Result<PodLinks> {
    rtnl::in_netns(netns, || -> rtnl::Result<PodLinks> {
        let mut nl = rtnl::Netlink::open()?;
        let (mut veths, mut taps) = (Vec::new(), Vec::new());
        for link in nl.links()? {
            if link.kind.as_deref() == Some("veth") {
                veths.push(link.name.clone());
            }
            if link.name.starts_with("tap") && link.name.ends_with("_kata") {
                taps.push((link.name.clone(), nl.ingress_filters(link.index)?));
            }
        }
        Ok((veths, taps))
    })
    .with_context(|| format!("enter pod netns {}", netns.display()))?
    .with_context(|| format!("netlink in pod netns {}", netns.display()))
}

pub(super) fn three_pods(r: &mut CriRunner) -> Result<String> {
    if !r.kata() {
        bail!("three-pods checks VMs: run it with handler kata");
    }
    let before: BTreeSet<String> = super::leftovers(r, &[])?.into_iter().collect();
    let names: Vec<String> = (1..=PODS).map(|i| format!("trio-{i}")).collect();
    let configs: Vec<PodSandboxConfig> = names
        .iter()
        .map(|n| r.pod_config(n, &format!("kata-cri-{n}")))
        .collect();
    for c in &configs {
        std::fs::create_dir_all(&c.log_directory)?;
    }
    let socket = r.env.containerd.layout.address.clone();
    let image = r.env.image.name.clone();
    let handler = r.handler;
    let slow = r.env.client.slow_call;
    let t0 = Instant::now();
    let started: Vec<Started> = std::thread::scope(|s| {
        let handles: Vec<_> = configs
            .iter()
            .zip(&names)
            .map(|(config, name)| {
                let (socket, image) = (&socket, &image);
                s.spawn(move || start_one(socket, slow, handler, image, name, config))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Started {
                    error: Some(anyhow!("the starter thread panicked")),
                    ..Default::default()
                })
            })
            .collect()
    });
    let start_ms = t0.elapsed().as_millis();
    let mut errors = Vec::new();
    for (st, name) in started.iter().zip(&names) {
        if let Some(p) = &st.pod {
            r.adopt_pod(p);
        }
        if let Some(c) = &st.container {
            r.env.containerd.remember_id(c);
        }
        if let Some(e) = &st.error {
            errors.push(format!("{name}: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("starting {PODS} pods at once failed: {}", errors.join("; "));
    }
    // The RunPodSandbox calls really overlapped in time.
    let calls: Vec<(Instant, Instant)> = started.iter().filter_map(|s| s.run_call).collect();
    let last_start = calls.iter().map(|c| c.0).max().context("no call")?;
    let first_end = calls.iter().map(|c| c.1).min().context("no call")?;
    let spans: Vec<String> = calls
        .iter()
        .map(|(a, b)| {
            format!(
                "{}-{} ms",
                a.duration_since(t0).as_millis(),
                b.duration_since(t0).as_millis()
            )
        })
        .collect();
    if last_start >= first_end {
        bail!(
            "the {PODS} RunPodSandbox calls did not overlap (spans {spans:?}): they ran one after another"
        );
    }
    // All RUNNING together, then READY with distinct addresses.
    let containers: Vec<String> = started
        .iter()
        .map(|s| s.container.clone().expect("no error, so made"))
        .collect();
    for c in &containers {
        r.wait_container(c, ContainerState::ContainerRunning, ALL_RUNNING)?;
    }
    let mut pods: Vec<Pod> = Vec::new();
    for ((st, name), config) in started.iter().zip(&names).zip(&configs) {
        let id = st.pod.clone().expect("no error, so made");
        pods.push(r.check_pod(name, id, config.clone())?);
    }
    for c in &containers {
        let s = r.env.client.container_status(c)?;
        if s.state != ContainerState::ContainerRunning as i32 {
            bail!(
                "container {c}: not RUNNING while the other pods run: {:?}",
                ContainerState::try_from(s.state)
            );
        }
    }
    let ips: BTreeSet<&str> = pods.iter().map(|p| p.ip.as_str()).collect();
    if ips.len() != PODS {
        bail!(
            "expected {PODS} distinct pod addresses, got {:?}",
            pods.iter().map(|p| &p.ip).collect::<Vec<_>>()
        );
    }
    let mut seen = vec![format!(
        "{PODS} pods RUNNING {start_ms} ms after the start (RunPodSandbox spans {})",
        spans.join(", ")
    )];

    // Own CID each: from the vsock daemon's or QEMU's command line.
    let procs = r.env.containerd.our_processes();
    let mut cids: BTreeMap<u32, String> = BTreeMap::new();
    for p in &pods {
        let found: BTreeSet<u32> = procs
            .iter()
            .filter(|pr| pr.cmdline().contains(&p.id))
            .filter_map(|pr| guest_cid(&pr.argv))
            .collect();
        let cid = match found.len() {
            1 => *found.iter().next().expect("one"),
            _ => bail!(
                "pod {}: expected one vsock guest CID on the command lines of its QEMU/vhost-device-vsock, found {found:?} (our processes: {:?})",
                p.id,
                procs.iter().map(|p| p.cmdline()).collect::<Vec<_>>()
            ),
        };
        if let Some(other) = cids.insert(cid, p.id.clone()) {
            bail!("pods {other} and {} share vsock guest CID {cid}", p.id);
        }
    }
    seen.push(format!("guest CIDs {:?}", cids.keys().collect::<Vec<_>>()));

    // Own netns each, with a tap mirrored to its veth.
    let mut namespaces: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut tap_seen = Vec::new();
    for p in &pods {
        let info = r.env.client.pod_sandbox_info(&p.id)?;
        let ns = netns_path(&info).with_context(|| {
            format!(
                "pod {}: no network namespace path in its runtime spec",
                p.id
            )
        })?;
        let meta = std::fs::metadata(&ns)
            .with_context(|| format!("pod {}: netns {}", p.id, ns.display()))?;
        if let Some(other) = namespaces.insert((meta.dev(), meta.ino()), p.id.clone()) {
            bail!(
                "pods {other} and {} share one network namespace ({})",
                p.id,
                ns.display()
            );
        }
        let (veths, taps) = pod_links(&ns)?;
        if veths.len() != 1 || taps.len() != 1 {
            bail!(
                "pod {} netns {}: expected one veth and one tap, found veths {veths:?}, taps {:?}",
                p.id,
                ns.display(),
                taps.iter().map(|t| &t.0).collect::<Vec<_>>()
            );
        }
        let (tap, filters) = &taps[0];
        if filters.is_empty() {
            bail!(
                "pod {} netns {}: tap {tap} has no ingress filter (no mirred to {})",
                p.id,
                ns.display(),
                veths[0]
            );
        }
        tap_seen.push(format!("{} {tap}<->{}", ns.display(), veths[0]));
    }
    seen.push(format!("netns and taps: {}", tap_seen.join(", ")));

    // The CNI address on a guest interface, in the guest (not the host) kernel.
    let host = host_kernel()?;
    for (p, c) in pods.iter().zip(&containers) {
        let out = r.exec(c, &["sh", "-c", "uname -r; ip -o -4 addr show"])?;
        let want = format!("inet {}/24", p.ip);
        let kernel = out.stdout.lines().next().unwrap_or("").trim().to_string();
        if out.exit_code != 0 || kernel == host || !out.stdout.contains(&want) {
            bail!(
                "pod {}: expected the guest kernel (host {host}) and {want} on an interface, got {}",
                p.id,
                out.describe()
            );
        }
    }
    seen.push(format!("addresses {ips:?} each on its guest's interface"));

    // Pod to pod: each fetches from the other two.
    let mut fetched = 0;
    for (i, (_, from)) in pods.iter().zip(&containers).enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let want = format!("from-{}", names[j]);
            r.exec_until(
                from,
                &["sh", "-c", &http_get(&to.ip, PORT)],
                &want,
                SERVER_START,
            )
            .with_context(|| format!("{} -> {} ({}:{PORT})", names[i], names[j], to.ip))?;
            fetched += 1;
        }
    }
    seen.push(format!("{fetched} pod-to-pod HTTP fetches"));

    // Remove all three; nothing new is left.
    let ids: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    for id in &ids {
        r.env.client.stop_pod_sandbox(id)?;
        r.env.client.remove_pod_sandbox(id)?;
        r.env.pods.borrow_mut().retain(|p| p != id);
    }
    leftovers_settle(r, &ids, &before)?;
    seen.push(if before.is_empty() {
        "removed; leftover scan clean".to_string()
    } else {
        format!(
            "removed; leftover scan finds nothing beyond the {} entries of before",
            before.len()
        )
    });
    Ok(seen.join("; "))
}

#[cfg(test)]
mod tests {
    use super::{guest_cid, netns_path};

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn cids_are_read_from_both_command_lines() {
        assert_eq!(
            guest_cid(&argv(
                "vhost-device-vsock --guest-cid 5 --socket /run/x/vhost-vsock.sock"
            )),
            Some(5)
        );
        assert_eq!(guest_cid(&argv("x --guest-cid=7")), Some(7));
        assert_eq!(
            guest_cid(&argv(
                "qemu -device vhost-vsock-pci,id=vsock0,guest-cid=12 -m 1"
            )),
            Some(12)
        );
        assert_eq!(
            guest_cid(&argv("qemu -device vhost-user-vsock-pci,id=v")),
            None
        );
        assert_eq!(guest_cid(&argv("x --guest-cid")), None);
    }

    #[test]
    fn netns_path_comes_from_the_runtime_spec() {
        let info = serde_json::json!({"runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/run/x/netns/cni-1"},
        ]}}});
        assert_eq!(
            netns_path(&info).as_deref(),
            Some(std::path::Path::new("/run/x/netns/cni-1"))
        );
        let none =
            serde_json::json!({"runtimeSpec": {"linux": {"namespaces": [{"type": "network"}]}}});
        assert_eq!(netns_path(&none), None);
    }
}
