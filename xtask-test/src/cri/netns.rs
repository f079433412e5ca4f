//! The test's own network namespace ("the node"): containerd runs in it,
//! so the CNI bridge, every veth and every pod address exist only there.
//! Nothing here touches the host's interfaces, routes or iptables, and no
//! traffic leaves the namespace. Dropping the guard deletes it, also after
//! failures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::e2e::bounded::{run_bounded, Outcome};

/// The pod network: a test subnet that is nowhere else (the namespace is
/// new and empty, so it cannot clash with the host's either).
pub const POD_SUBNET: &str = "10.214.0.0/24";
pub const NODE_BRIDGE: &str = "kcri0";
/// The bridge's address, the pods' gateway (`isGateway`).
pub const NODE_ADDRESS: &str = "10.214.0.1";
pub const CNI_NETWORK_NAME: &str = "kata-cri";

const IP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestNetns {
    pub name: String,
    /// `/run/netns/NAME`, what containerd is started in.
    pub path: PathBuf,
}

impl TestNetns {
    /// `ip netns add NAME` and its loopback up (inside the namespace).
    pub fn create(name: &str) -> Result<TestNetns> {
        for line in crate::e2e::network::remove_dead_runs_netns() {
            eprintln!("test: {line}");
        }
        let path = Path::new("/run/netns").join(name);
        if path.exists() {
            bail!(
                "network namespace {name} already exists: a run with this pid left it; `ip netns delete {name}` removes it"
            );
        }
        run_bounded(ip(&["netns", "add", name]), None, IP_TIMEOUT)?
            .require_success()
            .context("create the test's network namespace")?;
        let ns = TestNetns {
            name: name.into(),
            path,
        };
        ns.ip(&["link", "set", "lo", "up"])?.require_success()?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`: iproute2 inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Outcome> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_bounded(ip(&all), None, IP_TIMEOUT)
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn exec_command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = ip(&["netns", "exec", self.name.as_str(), program]);
        cmd.args(args);
        cmd
    }

    /// Link names in the namespace (`ip -o link`).
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?.require_success()?;
        Ok(parse_link_names(&out.stdout))
    }

    /// `tc filter show dev LINK ingress|egress` for every link, non-empty
    /// answers only: (link, direction, filters).
    pub fn tc_filters(&self) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for link in self.links()? {
            for dir in ["ingress", "egress"] {
                let o = run_bounded(
                    self.exec_command("tc", &["filter", "show", "dev", &link, dir]),
                    None,
                    IP_TIMEOUT,
                )?;
                if o.success() && !o.stdout.trim().is_empty() {
                    out.push((link.clone(), dir.to_string(), o.stdout.trim().to_string()));
                }
            }
        }
        Ok(out)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        match run_bounded(ip(&["netns", "delete", &self.name]), None, IP_TIMEOUT) {
            Ok(o) if o.success() => {}
            Ok(o) => eprintln!(
                "test cri: warning: cannot delete network namespace {}: {}",
                self.name,
                o.describe()
            ),
            Err(e) => eprintln!(
                "test cri: warning: cannot delete network namespace {}: {e:#}",
                self.name
            ),
        }
    }
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Names from `ip -o link show` lines (`2: kcri0: <...`, `5: veth1@if2: ...`).
pub fn parse_link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The CNI network: a bridge with host-local IPAM on [`POD_SUBNET`], the
/// bridge as gateway, no masquerading (no iptables), and the address
/// reservations kept in `ipam_dir` (the run's temp dir, not the host's
/// /var/lib/cni).
pub fn cni_conflist(ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK_NAME,
        "plugins": [bridge_plugin(ipam_dir), {"type": "loopback"}],
    }))
    .expect("a JSON value serialises")
}

fn bridge_plugin(ipam_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "type": "bridge",
        "bridge": NODE_BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_ADDRESS}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir.display().to_string(),
        },
    })
}

/// The network of a bad-input scenario, named `network`: the same bridge,
/// then the fixture plugin (`fixture::PLUGIN`) breaking what `mode` says;
/// it may touch only netns files in `netns_dir` and records its calls in
/// `record`.
pub fn fixture_conflist(
    network: &str,
    ipam_dir: &Path,
    mode: &str,
    netns_dir: &Path,
    record: &Path,
) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            bridge_plugin(ipam_dir),
            {
                "type": super::fixture::PLUGIN,
                "mode": mode,
                "netnsDir": netns_dir.display().to_string(),
                "recordFile": record.display().to_string(),
            },
        ],
    }))
    .expect("a JSON value serialises")
}

/// The names of the CNI networks containerd's CRI plugin has loaded, from
/// the `cniconfig` entry of its verbose Status (go-cni's ConfigResult:
/// `Networks[].Config.Name`).
pub fn loaded_networks(cniconfig: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(cniconfig).unwrap_or_default();
    v["Networks"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| n["Config"]["Name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{cni_conflist, fixture_conflist, loaded_networks, parse_link_names};

    #[test]
    fn link_names_are_parsed() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                    3: kcri0: <BROADCAST,MULTICAST,UP> mtu 1500\n\
                    4: vethab12@if2: <BROADCAST> mtu 1500\n";
        assert_eq!(parse_link_names(text), ["lo", "kcri0", "vethab12"]);
    }

    #[test]
    fn conflist_is_a_private_bridge() {
        let c: serde_json::Value =
            serde_json::from_str(&cni_conflist(std::path::Path::new("/tmp/x/ipam"))).unwrap();
        let bridge = &c["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/x/ipam");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.214.0.0/24");
        assert_eq!(c["plugins"][1]["type"], "loopback");
    }

    #[test]
    fn fixture_conflist_chains_the_fixture_after_the_bridge() {
        use std::path::Path;
        let c: serde_json::Value = serde_json::from_str(&fixture_conflist(
            "kata-cri-fixture-x",
            Path::new("/tmp/x/ipam"),
            "no-addresses",
            Path::new("/tmp/x/state/netns"),
            Path::new("/tmp/x/record"),
        ))
        .unwrap();
        assert_eq!(c["name"], "kata-cri-fixture-x");
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/tmp/x/ipam");
        assert_eq!(c["plugins"][1]["type"], "kata-cri-fixture");
        assert_eq!(c["plugins"][1]["mode"], "no-addresses");
        assert_eq!(c["plugins"][1]["netnsDir"], "/tmp/x/state/netns");
        assert_eq!(c["plugins"][1]["recordFile"], "/tmp/x/record");
    }

    #[test]
    fn loaded_network_names_are_read_from_status() {
        let text = r#"{"PluginDirs":["/x"],"PluginConfDir":"/c","PluginMaxConfNum":1,"Prefix":"eth",
            "Networks":[{"Config":{"Name":"cni-loopback","CNIVersion":"0.3.1","Plugins":[]},"IFName":"lo"},
                        {"Config":{"Name":"kata-cri","CNIVersion":"1.0.0","Plugins":[]},"IFName":"eth0"}]}"#;
        assert_eq!(loaded_networks(text), ["cni-loopback", "kata-cri"]);
        assert!(loaded_networks("not json").is_empty());
    }
}
