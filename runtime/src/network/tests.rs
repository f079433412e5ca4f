use super::*;

#[test]
fn taps_take_upstream_names() {
    assert_eq!(tap_name(0), "tap0_kata");
    assert_eq!(tap_name(3), "tap3_kata");
}

#[test]
fn a_missing_namespace_is_named() {
    let e = PodNetwork::setup(Path::new("/var/run/netns/kata-no-such-ns")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("pod network namespace /var/run/netns/kata-no-such-ns: does not exist"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
}

use rtnl::scratch::ScratchNetns;

/// A scratch "pod" or "node" namespace of these root tests.
fn scratch(tag: &str) -> ScratchNetns {
    ScratchNetns::new(&format!("kata-rt-{tag}"))
}

fn tc_filters(ns: &ScratchNetns, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "tc", "filter", "show", "dev", dev, "ingress",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root, ip and tc"]
fn veths_get_taps_filters_and_their_configuration_and_teardown_undoes_it() {
    let node = scratch("node");
    let pod = scratch("pod");
    node.ip(&[
        "link", "add", "veth-n", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    pod.ip(&[
        "link",
        "set",
        "eth0",
        "address",
        "02:00:0a:d5:07:02",
        "mtu",
        "1400",
        "up",
    ]);
    pod.ip(&["addr", "add", "10.213.7.2/24", "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", "10.213.7.1"]);
    pod.ip(&[
        "neigh",
        "add",
        "10.213.7.1",
        "lladdr",
        "02:00:0a:d5:07:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);

    let mut net = PodNetwork::setup(&pod.path()).unwrap();
    assert_eq!(net.nics.len(), 1);
    assert_eq!(net.nics[0].mac, "02:00:0a:d5:07:02");
    let g = &net.guest;
    assert_eq!(g.interfaces.len(), 1);
    assert_eq!(g.interfaces[0].name, "eth0");
    assert_eq!(g.interfaces[0].mtu, 1400);
    assert_eq!(g.interfaces[0].IPAddresses[0].address, "10.213.7.2");
    assert_eq!(g.interfaces[0].IPAddresses[0].mask, "24");
    assert!(
        g.routes
            .iter()
            .any(|r| r.dest.is_empty() && r.gateway == "10.213.7.1" && r.device == "eth0"),
        "{:?}",
        g.routes
    );
    assert!(
        g.routes
            .iter()
            .any(|r| r.dest == "10.213.7.0/24" && r.scope == 253),
        "{:?}",
        g.routes
    );
    assert_eq!(g.neighbours.len(), 1);
    assert_eq!(g.neighbours[0].lladdr, "02:00:0a:d5:07:01");

    let links = pod.output(&["-o", "link", "show", "tap0_kata"]);
    assert!(links.contains("mtu 1400"), "{links}");
    assert!(
        tc_filters(&pod, "eth0").contains("mirred"),
        "no redirect on eth0"
    );
    assert!(
        tc_filters(&pod, "tap0_kata").contains("mirred"),
        "no redirect on tap0_kata"
    );

    assert_eq!(net.teardown(), Vec::<String>::new());
    assert!(!pod.output(&["link"]).contains("tap0_kata"));
    assert_eq!(tc_filters(&pod, "eth0").trim(), "");
    let qdiscs = std::process::Command::new("ip")
        .args([
            "netns", "exec", &pod.name, "tc", "qdisc", "show", "dev", "eth0",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&qdiscs.stdout).contains("ingress"));
    // The veth is as it was.
    assert!(pod
        .output(&["addr", "show", "eth0"])
        .contains("10.213.7.2/24"));
}

#[test]
#[ignore = "needs root and ip"]
fn other_kinds_are_refused_by_name_and_leave_nothing() {
    let pod = scratch("tun");
    pod.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    pod.ip(&["tuntap", "add", "tap7", "mode", "tap"]);
    let e = PodNetwork::setup(&pod.path()).unwrap_err().to_string();
    assert!(e.contains("interface tap7 is a tun device"), "{e}");
    assert!(e.contains("veth interfaces only"), "{e}");
    assert!(!pod.output(&["link"]).contains("_kata"));
}
