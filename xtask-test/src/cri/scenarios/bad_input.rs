//! Bad pod networks through CRI: for a while the test's CNI network is
//! one that chains the fixture plugin (`cri/fixture.rs`) after the bridge,
//! so that RunPodSandbox hands the runtime (or containerd) a broken pod
//! network. Each scenario expects a CRI error naming the problem, quickly
//! (no hang), and afterwards nothing new in the leftover scan: no shim,
//! QEMU, virtiofsd or vsock daemon, mount, netns, veth, tap, tc filter,
//! IPAM reservation or state.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{leftovers, leftovers_settle, CriRunner};
use crate::cri::client::{CriClient, CriError};
use crate::cri::fixture::{read_record, Mode, EXTRA_NAME};
use crate::cri::netns::{fixture_conflist, loaded_networks, CNI_NETWORK_NAME};
use crate::cri::CriEnv;

/// Sorts before the test network's conflist: containerd loads the first.
const FIXTURE_CONF: &str = "00-kata-cri-fixture.conflist";
/// How long containerd's CNI config watcher gets to load a change.
const RELOAD: Duration = Duration::from_secs(30);

/// The fixture's network in front of the test network, until restored
/// (also when dropped after a failure).
struct FixtureNetwork<'a> {
    client: &'a CriClient,
    conf: PathBuf,
    record: PathBuf,
    restored: bool,
}

impl<'a> FixtureNetwork<'a> {
    fn install(env: &'a CriEnv, mode: Mode) -> Result<FixtureNetwork<'a>> {
        let network = format!("kata-cri-fixture-{}", mode.name());
        let dir = &env.containerd.layout.dir;
        let record = dir.join(format!("fixture-{}.record", mode.name()));
        let _ = std::fs::remove_file(&record);
        let netns_dir = env
            .containerd
            .layout
            .state
            .join("io.containerd.grpc.v1.cri/netns");
        let text = fixture_conflist(&network, &env.ipam_dir, mode.name(), &netns_dir, &record);
        // Written aside and renamed: the watcher never sees half a file.
        let conf = env.cni_conf_dir.join(FIXTURE_CONF);
        let tmp = env.cni_conf_dir.join("fixture.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &conf)?;
        let net = FixtureNetwork {
            client: &env.client,
            conf,
            record,
            restored: false,
        };
        wait_loaded(net.client, &network)?;
        Ok(net)
    }

    fn restore(mut self) -> Result<()> {
        self.restored = true;
        std::fs::remove_file(&self.conf)?;
        wait_loaded(self.client, CNI_NETWORK_NAME)
    }
}

impl Drop for FixtureNetwork<'_> {
    fn drop(&mut self) {
        if !self.restored {
            let _ = std::fs::remove_file(&self.conf);
            if let Err(e) = wait_loaded(self.client, CNI_NETWORK_NAME) {
                eprintln!("test cri: warning: {e:#}");
            }
        }
    }
}

/// Waits until containerd's CRI plugin has loaded the CNI network `name`.
fn wait_loaded(client: &CriClient, name: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let info = client.status_info()?;
        let loaded = loaded_networks(info.get("cniconfig").map(String::as_str).unwrap_or(""));
        if loaded.iter().any(|n| n == name) {
            return Ok(());
        }
        if t.elapsed() > RELOAD {
            bail!(
                "containerd did not load CNI network {name} within {RELOAD:?}: it has {loaded:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// RunPodSandbox over the fixture's network `mode` must fail with a CRI
/// error whose message holds every string `expect(sandbox id, netns)`
/// gives; then nothing new may be left.
fn refused(
    r: &mut CriRunner,
    mode: Mode,
    name: &str,
    expect: impl Fn(&str, &str) -> Vec<String>,
) -> Result<String> {
    if !r.kata() {
        bail!("this scenario checks the kata runtime: run it with handler kata");
    }
    let before: BTreeSet<String> = leftovers(r, &[])?.into_iter().collect();
    let net = FixtureNetwork::install(r.env, mode)?;
    let config = r.pod_config(name, name);
    std::fs::create_dir_all(&config.log_directory)?;
    let t = Instant::now();
    let result = r.env.client.run_pod_sandbox(&config, r.handler);
    let took = t.elapsed();
    let record = read_record(&net.record);
    for (_, id, _) in &record {
        if !id.is_empty() {
            r.env.containerd.remember_id(id);
        }
    }
    let err = match result {
        Ok(id) => {
            r.adopt_pod(&id);
            bail!(
                "RunPodSandbox {name} succeeded (pod {id}) though the fixture ({}) broke its network",
                mode.name()
            )
        }
        Err(e) => e,
    };
    net.restore()?;
    let cri = err
        .chain()
        .find_map(|e| e.downcast_ref::<CriError>())
        .with_context(|| format!("expected a CRI error status, got: {err:#}"))?;
    let adds: Vec<&(String, String, String)> =
        record.iter().filter(|(c, _, _)| c == "ADD").collect();
    let [(_, id, netns)] = adds.as_slice() else {
        bail!(
            "the fixture ({}) recorded {record:?}: expected one ADD (did containerd use its network?); RunPodSandbox said {cri}",
            mode.name()
        );
    };
    for want in expect(id, netns) {
        if !cri.message.contains(&want) {
            bail!("expected the CRI error to name {want:?}, got {cri}");
        }
    }
    leftovers_settle(r, std::slice::from_ref(id), &before)?;
    let calls: Vec<&str> = record.iter().map(|(c, _, _)| c.as_str()).collect();
    Ok(format!(
        "RunPodSandbox refused after {} ms: {:?}: {}; fixture calls {calls:?}; leftover scan clean",
        took.as_millis(),
        cri.code,
        cri.message
    ))
}

/// 1. The pod netns path the runtime is given no longer exists.
pub(super) fn netns_missing(r: &mut CriRunner) -> Result<String> {
    refused(r, Mode::RemoveNetns, "netns-missing", |_, netns| {
        vec![netns.to_string(), "does not exist".into()]
    })
}

/// 2. The pod netns holds an interface tcfilter cannot mirror (a macvlan).
pub(super) fn non_veth_interface(r: &mut CriRunner) -> Result<String> {
    refused(
        r,
        Mode::MacvlanInterface,
        "non-veth-interface",
        |_, netns| {
            vec![
                netns.to_string(),
                format!("interface {EXTRA_NAME} is a macvlan device"),
                "veth interfaces only".into(),
            ]
        },
    )
}

/// 3. The CNI result carries no address for the pod.
pub(super) fn no_cni_addresses(r: &mut CriRunner) -> Result<String> {
    refused(r, Mode::NoAddresses, "no-cni-addresses", |id, _| {
        vec![id.to_string(), "network info".into()]
    })
}
