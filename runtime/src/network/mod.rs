//! The pod's network for the guest (`internetworking_model = "tcfilter"`,
//! upstream Kata's default).
//!
//! CNI (or a test) made the pod's network namespace with one veth end per
//! interface. For each veth the shim creates a tap (`tap0_kata`, ...) in
//! that namespace, hands the tap's fd to QEMU as a virtio-net NIC with the
//! veth's MAC, and mirrors every frame between veth and tap with tc: an
//! ingress qdisc on each and a u32 match-all filter whose `mirred egress
//! redirect` action sends the frame out of the other. The guest's agent then
//! gets the veth's addresses, MTU, routes and static neighbours, so the
//! guest answers for the pod's addresses as the veth would have.
//!
//! QEMU itself stays in the shim's namespace: only the tap fd crosses. The
//! taps are not persistent: they go away with QEMU's fd, and teardown
//! deletes them and the veths' ingress qdiscs (and with them the filters),
//! leaving each veth as CNI made it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocols::types::{ARPNeighbor, Interface, Route as ProtoRoute};
use rtnl::{proto, Link, Netlink};

use crate::hypervisor::NetDevice;

/// Upstream's tap names: `tap<n>_kata`, n the interface's position.
pub fn tap_name(position: usize) -> String {
    format!("tap{position}_kata")
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("pod network namespace {}: {source}", .netns.display())]
    Namespace { netns: PathBuf, source: io::Error },
    #[error("pod network namespace {}: interface {name} is a {kind} device; internetworking_model \"tcfilter\" handles veth interfaces only (set internetworking_model = \"none\" to run without network)", .netns.display())]
    Unsupported {
        netns: PathBuf,
        name: String,
        kind: String,
    },
    #[error("pod network namespace {}: {source}", .netns.display())]
    Netlink { netns: PathBuf, source: rtnl::Error },
    #[error("pod network namespace {}: create tap {tap}: {source}", .netns.display())]
    Tap {
        netns: PathBuf,
        tap: String,
        source: io::Error,
    },
}

/// One veth wired to one tap.
#[derive(Debug, Clone)]
struct Endpoint {
    veth_index: u32,
    veth_name: String,
    /// Whether this shim added the veth's ingress qdisc (and so removes it).
    veth_qdisc: bool,
    tap_name: String,
}

/// What the guest gets, in the agent API's terms.
#[derive(Debug, Clone, Default)]
pub struct GuestNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<ProtoRoute>,
    pub neighbours: Vec<ARPNeighbor>,
}

/// The taps and filters this sandbox made in the pod's namespace.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    endpoints: Vec<Endpoint>,
    /// The guest NICs; QEMU inherits their taps' fds.
    pub nics: Vec<NetDevice>,
    pub guest: GuestNetwork,
}

impl PodNetwork {
    /// Wire every interface of the namespace at `netns` to a tap for the
    /// guest. On error nothing this made is left behind.
    pub fn setup(netns: &Path) -> Result<PodNetwork, NetworkError> {
        if !netns.exists() {
            return Err(NetworkError::Namespace {
                netns: netns.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "does not exist (the OCI spec's network namespace path must name a namespace file, e.g. /var/run/netns/<name>)",
                ),
            });
        }
        let namespace = |source| NetworkError::Namespace {
            netns: netns.to_owned(),
            source,
        };
        rtnl::in_netns(netns, || {
            let mut endpoints = Vec::new();
            let result = wire(netns, &mut endpoints);
            if result.is_err() {
                for problem in unwire(&endpoints) {
                    log::warn!(
                        "{}: cleanup after a failed setup: {problem}",
                        netns.display()
                    );
                }
            }
            result.map(|(nics, guest)| PodNetwork {
                netns: netns.to_owned(),
                endpoints,
                nics,
                guest,
            })
        })
        .map_err(namespace)?
    }

    /// The pod's namespace.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Delete the taps and the veths' ingress qdiscs; returns what could
    /// not be undone. A namespace that is gone took everything with it.
    pub fn teardown(&mut self) -> Vec<String> {
        self.nics.clear();
        if self.endpoints.is_empty() {
            return Vec::new();
        }
        let endpoints = std::mem::take(&mut self.endpoints);
        match rtnl::in_netns(&self.netns, || unwire(&endpoints)) {
            Ok(problems) => problems,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => vec![format!(
                "pod network namespace {}: {e}",
                self.netns.display()
            )],
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        for p in self.teardown() {
            log::warn!("{p}");
        }
    }
}

/// Open a tap named `name` in the calling thread's namespace: no packet
/// info header, virtio-net header on (QEMU uses it), one queue.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is and outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// In the pod's namespace: check every interface, then make a tap and the
/// two redirect filters per veth; `endpoints` records what exists so far.
fn wire(
    netns: &Path,
    endpoints: &mut Vec<Endpoint>,
) -> Result<(Vec<NetDevice>, GuestNetwork), NetworkError> {
    let nl_err = |source| NetworkError::Netlink {
        netns: netns.to_owned(),
        source,
    };
    let mut nl = Netlink::open().map_err(nl_err)?;
    let links = nl.links().map_err(nl_err)?;
    let veths: Vec<&Link> = links.iter().filter(|l| !l.is_loopback()).collect();
    for link in &veths {
        if link.kind.as_deref() != Some("veth") {
            return Err(NetworkError::Unsupported {
                netns: netns.to_owned(),
                name: link.name.clone(),
                kind: link
                    .kind
                    .clone()
                    .unwrap_or_else(|| "kindless (physical or virtio)".into()),
            });
        }
    }
    let mut nics = Vec::new();
    for (position, veth) in veths.iter().enumerate() {
        let tap = tap_name(position);
        let fd = open_tap(&tap).map_err(|source| NetworkError::Tap {
            netns: netns.to_owned(),
            tap: tap.clone(),
            source,
        })?;
        endpoints.push(Endpoint {
            veth_index: veth.index,
            veth_name: veth.name.clone(),
            veth_qdisc: false,
            tap_name: tap.clone(),
        });
        let tap_link = nl.link_by_name(&tap).map_err(nl_err)?;
        nl.set_link(tap_link.index, None, Some(veth.mtu), Some(true))
            .map_err(nl_err)?;
        nl.add_ingress_qdisc(veth.index).map_err(nl_err)?;
        if let Some(e) = endpoints.last_mut() {
            e.veth_qdisc = true;
        }
        nl.add_redirect_filter(veth.index, tap_link.index)
            .map_err(nl_err)?;
        nl.add_ingress_qdisc(tap_link.index).map_err(nl_err)?;
        nl.add_redirect_filter(tap_link.index, veth.index)
            .map_err(nl_err)?;
        nics.push(NetDevice {
            tap: Arc::new(fd),
            mac: proto::format_mac(&veth.mac),
        });
        log::info!(
            "{}: {} ({}) mirrored to {tap}",
            netns.display(),
            veth.name,
            proto::format_mac(&veth.mac)
        );
    }
    let guest = guest_network(&mut nl, &veths).map_err(nl_err)?;
    Ok((nics, guest))
}

/// The addresses, routes and static neighbours of `veths`, for the guest.
fn guest_network(nl: &mut Netlink, veths: &[&Link]) -> rtnl::Result<GuestNetwork> {
    let name_of = |index: u32| {
        veths
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    };
    let addresses = nl.addresses()?;
    let interfaces = veths
        .iter()
        .map(|l| proto::interface(l, &addresses))
        .collect();
    let routes = nl
        .routes()?
        .iter()
        .filter(|r| {
            !r.destination
                .is_some_and(|(ip, _)| proto::is_ipv6_link_local(ip) || ip.is_multicast())
        })
        .filter_map(|r| name_of(r.index).map(|name| proto::route(r, name)))
        .collect();
    let neighbours = nl
        .neighbours()?
        .iter()
        .filter(|n| n.state & rtnl::NUD_PERMANENT != 0 && n.mac.is_some())
        .filter_map(|n| name_of(n.index).map(|name| proto::neighbour(n, name)))
        .collect();
    Ok(GuestNetwork {
        interfaces,
        routes,
        neighbours,
    })
}

/// In the pod's namespace: remove the taps and the ingress qdiscs this
/// sandbox added. What is already gone is fine.
fn unwire(endpoints: &[Endpoint]) -> Vec<String> {
    let gone = |e: &rtnl::Error| {
        matches!(
            e.errno(),
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EINVAL)
        )
    };
    let mut problems = Vec::new();
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => return vec![e.to_string()],
    };
    let links = match nl.links() {
        Ok(l) => l,
        Err(e) => return vec![e.to_string()],
    };
    for e in endpoints {
        // The index may have been reused if the veth went away: only the
        // same name at the same index is the veth this sandbox wired.
        let veth_still_there = links
            .iter()
            .any(|l| l.index == e.veth_index && l.name == e.veth_name);
        if e.veth_qdisc && veth_still_there {
            if let Err(err) = nl.delete_ingress_qdisc(e.veth_index) {
                if !gone(&err) {
                    problems.push(format!("{}: {err}", e.veth_name));
                }
            }
        }
        if let Some(tap) = links.iter().find(|l| l.name == e.tap_name) {
            if let Err(err) = nl.delete_link(tap.index) {
                if !gone(&err) {
                    problems.push(format!("{}: {err}", e.tap_name));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests;
