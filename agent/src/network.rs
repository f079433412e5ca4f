//! The guest's network, as the runtime's network RPCs describe it: the
//! pod's interfaces (found by MAC: QEMU's virtio-net NICs carry the pod
//! veths' MACs), their routes and static neighbours, applied with netlink
//! in the agent's own network namespace, which the containers share.
//!
//! The agent's channel is AF_VSOCK, not a network interface: nothing here
//! can cut it, whatever a request asks. Loopback is never touched.

use std::sync::Mutex;

use protocols::types::{ARPNeighbor, Interface, Route as ProtoRoute};
use rtnl::proto::{self, FieldError};
use rtnl::{Address, Link, Netlink, Route};
use ttrpc::Code;

use crate::container::Failure;

/// One network change at a time: UpdateRoutes reads, deletes and adds, and
/// a concurrent request must not interleave with it.
static NETWORK: Mutex<()> = Mutex::new(());

fn invalid(e: FieldError) -> Failure {
    Failure {
        code: Code::INVALID_ARGUMENT,
        message: e.to_string(),
    }
}

fn internal(e: rtnl::Error) -> Failure {
    Failure {
        code: Code::INTERNAL,
        message: e.to_string(),
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// A name the kernel takes for a link: 1 to 15 bytes, no '/', ':' or
/// whitespace.
fn check_link_name(field: &str, name: &str) -> std::result::Result<(), FieldError> {
    if name.is_empty()
        || name.len() >= 16
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(FieldError {
            field: field.into(),
            message: format!(
                "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
            ),
        });
    }
    Ok(())
}

/// Addresses the agent replaces: not the kernel's link-local IPv6 ones.
fn replaceable(a: &Address) -> bool {
    !proto::is_ipv6_link_local(a.ip)
}

/// Routes the agent replaces: the main table's on pod interfaces, not the
/// kernel's link-local IPv6 and multicast ones.
fn replaceable_route(r: &Route) -> bool {
    !r.destination
        .is_some_and(|(ip, _)| proto::is_ipv6_link_local(ip) || ip.is_multicast())
}

/// UpdateInterface: the link whose MAC is `hwAddr` gets the name, MTU and
/// exactly the addresses of the request, and is brought up.
pub fn update_interface(req: &Interface) -> Result<Interface> {
    if req.hwAddr.is_empty() {
        return Err(invalid(FieldError {
            field: "interface.hwAddr".into(),
            message: "missing: the MAC of the guest NIC to configure".into(),
        }));
    }
    let mac = proto::parse_mac("interface.hwAddr", &req.hwAddr).map_err(invalid)?;
    check_link_name("interface.name", &req.name).map_err(invalid)?;
    let mtu = u32::try_from(req.mtu)
        .ok()
        .filter(|m| *m == 0 || (68..=65535).contains(m))
        .ok_or_else(|| {
            invalid(FieldError {
                field: "interface.mtu".into(),
                message: format!("{} is not an MTU (68 to 65535, or 0 to keep it)", req.mtu),
            })
        })?;
    let wanted: Vec<(std::net::IpAddr, u8)> = req
        .IPAddresses
        .iter()
        .enumerate()
        .map(|(i, a)| proto::parse_ip_address(&format!("interface.IPAddresses[{i}]"), a))
        .collect::<std::result::Result<_, _>>()
        .map_err(invalid)?;

    let _serial = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = Netlink::open().map_err(internal)?;
    let link = nl
        .links()
        .map_err(internal)?
        .into_iter()
        .find(|l| !l.is_loopback() && l.mac == mac)
        .ok_or_else(|| Failure {
            code: Code::NOT_FOUND,
            message: format!(
                "interface.hwAddr: no guest interface has MAC {}",
                req.hwAddr
            ),
        })?;
    if link.name != req.name {
        // The kernel renames only links that are down.
        nl.set_link(link.index, None, None, Some(false))
            .map_err(internal)?;
        nl.set_link(link.index, Some(&req.name), None, None)
            .map_err(internal)?;
    }
    if mtu != 0 && mtu != link.mtu {
        nl.set_link(link.index, None, Some(mtu), None)
            .map_err(internal)?;
    }
    for old in nl.addresses().map_err(internal)? {
        if old.index == link.index && replaceable(&old) {
            nl.delete_address(&old).map_err(internal)?;
        }
    }
    for (ip, prefix) in wanted {
        nl.add_address(&Address {
            index: link.index,
            ip,
            prefix,
        })
        .map_err(internal)?;
    }
    nl.set_link(link.index, None, None, Some(true))
        .map_err(internal)?;
    let now = nl
        .links()
        .map_err(internal)?
        .into_iter()
        .find(|l| l.index == link.index)
        .ok_or_else(|| Failure {
            code: Code::INTERNAL,
            message: format!("interface {} vanished while it was configured", req.name),
        })?;
    let addresses = nl.addresses().map_err(internal)?;
    Ok(proto::interface(&now, &addresses))
}

/// The index of the pod (non-loopback) interface named `name`.
fn index_of(links: &[Link]) -> impl Fn(&str) -> Option<u32> + '_ {
    move |name| {
        links
            .iter()
            .find(|l| !l.is_loopback() && l.name == name)
            .map(|l| l.index)
    }
}

/// Link-scope routes first: a gateway must be reachable when its route is
/// added.
fn in_adding_order(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort_by_key(|r| r.gateway.is_some());
    routes
}

/// UpdateRoutes: the routes on pod interfaces become exactly `routes`.
pub fn update_routes(routes: &[ProtoRoute]) -> Result<Vec<ProtoRoute>> {
    let _serial = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = Netlink::open().map_err(internal)?;
    let links = nl.links().map_err(internal)?;
    let wanted: Vec<Route> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| proto::parse_route(&format!("routes.Routes[{i}]"), r, index_of(&links)))
        .collect::<std::result::Result<_, _>>()
        .map_err(invalid)?;
    let pod = |index: u32| links.iter().any(|l| l.index == index && !l.is_loopback());
    for old in nl.routes().map_err(internal)? {
        if pod(old.index) && replaceable_route(&old) {
            match nl.delete_route(&old) {
                // Deleting a link-scope route may take routes through it along.
                Err(e) if e.errno() == Some(libc::ESRCH) => {}
                other => other.map_err(internal)?,
            }
        }
    }
    for route in in_adding_order(wanted) {
        nl.add_route(&route).map_err(internal)?;
    }
    list_routes_with(&mut nl, &links)
}

fn list_routes_with(nl: &mut Netlink, links: &[Link]) -> Result<Vec<ProtoRoute>> {
    Ok(nl
        .routes()
        .map_err(internal)?
        .iter()
        .filter_map(|r| {
            links
                .iter()
                .find(|l| l.index == r.index)
                .map(|l| proto::route(r, &l.name))
        })
        .collect())
}

pub fn list_interfaces() -> Result<Vec<Interface>> {
    let mut nl = Netlink::open().map_err(internal)?;
    let links = nl.links().map_err(internal)?;
    let addresses = nl.addresses().map_err(internal)?;
    Ok(links
        .iter()
        .map(|l| proto::interface(l, &addresses))
        .collect())
}

pub fn list_routes() -> Result<Vec<ProtoRoute>> {
    let mut nl = Netlink::open().map_err(internal)?;
    let links = nl.links().map_err(internal)?;
    list_routes_with(&mut nl, &links)
}

/// AddARPNeighbors: add (or replace) each entry on its pod interface.
pub fn add_neighbours(neighbours: &[ARPNeighbor]) -> Result<()> {
    let _serial = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = Netlink::open().map_err(internal)?;
    let links = nl.links().map_err(internal)?;
    let parsed: Vec<rtnl::Neighbour> = neighbours
        .iter()
        .enumerate()
        .map(|(i, n)| {
            proto::parse_neighbour(&format!("neighbors.ARPNeighbors[{i}]"), n, index_of(&links))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(invalid)?;
    for n in &parsed {
        nl.add_neighbour(n).map_err(internal)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_checked() {
        assert!(check_link_name("interface.name", "eth0").is_ok());
        for bad in ["", "a/b", "a b", "eth0:1", "sixteen-chars-xx", ".."] {
            let e = check_link_name("interface.name", bad).unwrap_err();
            assert_eq!(e.field, "interface.name", "{bad:?}");
        }
    }

    #[test]
    fn bad_requests_are_refused_before_any_change() {
        let mut i = Interface::new();
        i.name = "eth0".into();
        let e = update_interface(&i).unwrap_err();
        assert_eq!(e.code, Code::INVALID_ARGUMENT);
        assert!(
            e.message.starts_with("interface.hwAddr: missing"),
            "{}",
            e.message
        );
        i.hwAddr = "02:00:00:00:00:01".into();
        i.mtu = 20;
        let e = update_interface(&i).unwrap_err();
        assert!(
            e.message.starts_with("interface.mtu: 20 is not an MTU"),
            "{}",
            e.message
        );
        i.mtu = 1500;
        let mut a = protocols::types::IPAddress::new();
        a.address = "10.0.0.1".into();
        a.mask = "x".into();
        i.IPAddresses.push(a);
        let e = update_interface(&i).unwrap_err();
        assert!(
            e.message.starts_with("interface.IPAddresses[0].mask"),
            "{}",
            e.message
        );
    }

    #[test]
    fn link_scope_routes_are_added_first() {
        let r = |gw: Option<&str>| Route {
            index: 2,
            destination: None,
            gateway: gw.map(|g| g.parse().unwrap()),
            source: None,
            scope: 0,
            kernel: false,
        };
        let order = in_adding_order(vec![r(Some("10.0.0.1")), r(None), r(Some("10.0.0.2"))]);
        assert_eq!(order[0].gateway, None);
        assert_eq!(order[1].gateway, Some("10.0.0.1".parse().unwrap()));
    }

    /// Needs root: runs each RPC in a scratch network namespace with a veth
    /// standing in for the virtio-net NIC.
    #[test]
    #[ignore = "needs root and `ip netns`"]
    fn rpcs_configure_a_scratch_namespace() {
        let ns = rtnl::scratch::ScratchNetns::new("kata-agent-net");
        let ip = rtnl::scratch::ip;
        let outcome = rtnl::in_netns(&ns.path(), || {
            ip(&[
                "link",
                "add",
                "nic0",
                "address",
                "02:00:0a:d5:09:02",
                "type",
                "veth",
                "peer",
                "name",
                "peer0",
            ]);
            ip(&["link", "set", "peer0", "up"]);
            let mut i = Interface::new();
            i.name = "eth0".into();
            i.hwAddr = "02:00:0a:d5:09:02".into();
            i.mtu = 1420;
            for (addr, mask) in [("10.213.9.2", "24"), ("fd00:9::2", "64")] {
                let mut a = protocols::types::IPAddress::new();
                a.address = addr.into();
                a.mask = mask.into();
                i.IPAddresses.push(a);
            }
            let got = update_interface(&i).unwrap();
            assert_eq!(got.name, "eth0");
            assert_eq!(got.mtu, 1420);
            let mut addrs: Vec<String> = got
                .IPAddresses
                .iter()
                .map(|a| format!("{}/{}", a.address, a.mask))
                .collect();
            addrs.sort();
            assert_eq!(addrs, ["10.213.9.2/24", "fd00:9::2/64"]);
            // Again with one address: the other goes.
            i.IPAddresses.truncate(1);
            let got = update_interface(&i).unwrap();
            assert_eq!(got.IPAddresses.len(), 1);

            let mut link = ProtoRoute::new();
            link.dest = "10.213.9.0/24".into();
            link.device = "eth0".into();
            link.scope = 253;
            link.source = "10.213.9.2".into();
            let mut default = ProtoRoute::new();
            default.dest = "default".into();
            default.gateway = "10.213.9.1".into();
            default.device = "eth0".into();
            // Gateway route first in the request: the agent reorders.
            let routes = update_routes(&[default, link]).unwrap();
            assert!(
                routes
                    .iter()
                    .any(|r| r.dest.is_empty() && r.gateway == "10.213.9.1"),
                "{routes:?}"
            );
            assert_eq!(list_routes().unwrap().len(), routes.len());

            let mut n = ARPNeighbor::new();
            let mut to = protocols::types::IPAddress::new();
            to.address = "10.213.9.1".into();
            n.toIPAddress = protobuf::MessageField::some(to);
            n.device = "eth0".into();
            n.lladdr = "02:00:0a:d5:09:01".into();
            n.state = i32::from(rtnl::NUD_PERMANENT);
            add_neighbours(&[n.clone()]).unwrap();
            n.device = "lo".into();
            let e = add_neighbours(&[n]).unwrap_err();
            assert_eq!(e.code, Code::INVALID_ARGUMENT);
            assert!(
                e.message.starts_with("neighbors.ARPNeighbors[0].device"),
                "{}",
                e.message
            );

            let all = list_interfaces().unwrap();
            assert!(all
                .iter()
                .any(|i| i.name == "eth0" && i.hwAddr == "02:00:0a:d5:09:02"));
            assert!(all.iter().any(|i| i.name == "lo"));
            // An unknown MAC.
            i.hwAddr = "02:00:00:00:00:99".into();
            assert_eq!(update_interface(&i).unwrap_err().code, Code::NOT_FOUND);
        });
        drop(ns);
        outcome.unwrap();
    }
}
