//! Route netlink (`NETLINK_ROUTE`) requests, synchronous, shared by the
//! guest agent (which configures the guest's interfaces, routes and
//! neighbours from the runtime's network RPCs) and the runtime (which reads
//! the pod's network namespace and wires taps to its veths with tc).
//!
//! A [`Netlink`] socket talks to the network namespace of the thread that
//! opened it, whatever that thread does later: the runtime opens one from a
//! thread that entered the pod's namespace ([`in_netns`]). Everything here
//! is a thin typed layer over `netlink-packet-route`: one request, its
//! replies until the kernel's ack or `NLMSG_DONE`.
//!
//! [`proto`] converts between these types and the agent API's messages.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

pub mod proto;
#[cfg(feature = "scratch-netns")]
pub mod scratch;

/// A failed request: what was asked (`add address 10.0.0.2/24 to eth0`)
/// and the kernel's or the socket's error.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct Error {
    pub operation: String,
    #[source]
    pub source: io::Error,
}

impl Error {
    fn new(operation: impl Into<String>, source: io::Error) -> Error {
        Error {
            operation: operation.into(),
            source,
        }
    }

    /// The errno of the kernel's reply (`EEXIST`, `ENOENT`, ...).
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `ETH_P_ALL`: a tc filter's protocol that matches every frame.
const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's handle, `ffff:`; filters attach to it as parent.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// A receive buffer larger than any datagram the kernel sends for a dump
/// (it caps them at 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// A link (network interface) as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `tun`, `macvlan`, ...); `None` for devices
    /// without one (loopback, physical NICs, virtio-net).
    pub kind: Option<String>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// The `IFF_*` flags.
    pub flags: u32,
}

impl Link {
    pub fn is_loopback(&self) -> bool {
        self.flags & libc::IFF_LOOPBACK as u32 != 0
    }
}

/// An address of a link, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The output interface.
    pub index: u32,
    /// `None`: the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    /// rtnetlink scope: 0 universe, 253 link, 254 host.
    pub scope: u8,
    /// `true` for the routes the kernel made for an address (`proto kernel`).
    pub kernel: bool,
}

impl Route {
    pub fn is_ipv6(&self) -> bool {
        match (self.destination, self.gateway) {
            (Some((ip, _)), _) | (None, Some(ip)) => ip.is_ipv6(),
            (None, None) => false,
        }
    }
}

/// A neighbour (ARP or NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Vec<u8>>,
    /// `NUD_*` state.
    pub state: u16,
    /// `NTF_*` flags.
    pub flags: u8,
}

/// `NUD_PERMANENT`: a static entry (what CNI plugins add).
pub const NUD_PERMANENT: u16 = 0x80;

/// Run `f` on a new thread that has entered the network namespace at
/// `netns` (a `/var/run/netns/<name>` or `/proc/<pid>/ns/net` path). The
/// thread ends with `f`, so no pooled thread is ever left in that namespace.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = std::fs::File::open(netns).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", netns.display()),
        )
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on a file descriptor this function owns;
                // it changes the namespace of the calling thread only, a
                // scoped thread that ends when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("enter network namespace {}: {e}", netns.display()),
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the network namespace thread panicked"))?
    })
}

/// A `NETLINK_ROUTE` socket bound to the network namespace of the thread
/// that opened it.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::new("open a route netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::new("bind the route netlink socket", e))?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Send `message` with `flags` and collect the replies until the ack
    /// (`NLM_F_ACK`) or the end of a dump.
    fn exchange(
        &mut self,
        operation: &dyn Fn() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|e| Error::new(operation(), e))?;

        let mut replies = Vec::new();
        loop {
            self.buffer.clear();
            let len = self
                .socket
                .recv(&mut self.buffer, 0)
                .map_err(|e| Error::new(operation(), e))?;
            let mut offset = 0;
            while offset < len.min(self.buffer.len()) {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..])
                        .map_err(|e| {
                            Error::new(
                                operation(),
                                io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                            )
                        })?;
                let size = reply.header.length as usize;
                if size == 0 {
                    break;
                }
                offset += size.next_multiple_of(4);
                if reply.header.sequence_number != self.sequence {
                    continue; // a late reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(replies),
                    NetlinkPayload::Error(e) => return Err(Error::new(operation(), e.to_io())),
                    _ => {}
                }
            }
        }
    }

    fn dump(
        &mut self,
        operation: &dyn Fn() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(operation, message, NLM_F_DUMP)
    }

    fn execute(
        &mut self,
        operation: &dyn Fn() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        self.exchange(operation, message, NLM_F_ACK | flags)
            .map(drop)
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(
            &|| "list links".into(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| {
                Error::new(
                    format!("find link {name}"),
                    io::Error::from_raw_os_error(libc::ENODEV),
                )
            })
    }

    /// Rename, set the MTU and bring up or down the link `index`; `None`
    /// leaves that property alone. A rename needs the link down: do it
    /// before `up`.
    pub fn set_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
        up: Option<bool>,
    ) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = up {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        }
        if let Some(name) = name {
            m.attributes.push(LinkAttribute::IfName(name.into()));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.execute(
            &|| format!("set link {index} (name {name:?}, mtu {mtu:?}, up {up:?})"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.execute(
            &|| format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
    }

    pub fn addresses(&mut self) -> Result<Vec<Address>> {
        let replies = self.dump(
            &|| "list addresses".into(),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_from(&a),
                _ => None,
            })
            .collect())
    }

    fn address_message(a: &Address) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(a.ip);
        m.header.prefix_len = a.prefix;
        m.header.index = a.index;
        m.attributes.push(AddressAttribute::Local(a.ip));
        m.attributes.push(AddressAttribute::Address(a.ip));
        m
    }

    pub fn add_address(&mut self, a: &Address) -> Result<()> {
        self.execute(
            &|| format!("add address {}/{} to link {}", a.ip, a.prefix, a.index),
            RouteNetlinkMessage::NewAddress(Self::address_message(a)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete_address(&mut self, a: &Address) -> Result<()> {
        self.execute(
            &|| format!("delete address {}/{} of link {}", a.ip, a.prefix, a.index),
            RouteNetlinkMessage::DelAddress(Self::address_message(a)),
            0,
        )
    }

    /// The routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let replies = self.dump(
            &|| "list routes".into(),
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_from(&r),
                _ => None,
            })
            .collect())
    }

    fn route_message(r: &Route) -> RouteMessage {
        let mut m = RouteMessage::default();
        let ipv6 = r.is_ipv6();
        m.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = if r.kernel {
            RouteProtocol::Kernel
        } else {
            RouteProtocol::Boot
        };
        m.header.scope = RouteScope::from(r.scope);
        m.header.kind = RouteType::Unicast;
        if let Some((ip, prefix)) = r.destination {
            m.header.destination_prefix_length = prefix;
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        }
        if let Some(gw) = r.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(src) = r.source {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        m.attributes.push(RouteAttribute::Oif(r.index));
        m
    }

    /// Add or replace (`ip route replace`) a route.
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        self.execute(
            &|| format!("add route {}", describe_route(r)),
            RouteNetlinkMessage::NewRoute(Self::route_message(r)),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
    }

    pub fn delete_route(&mut self, r: &Route) -> Result<()> {
        self.execute(
            &|| format!("delete route {}", describe_route(r)),
            RouteNetlinkMessage::DelRoute(Self::route_message(r)),
            0,
        )
    }

    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>> {
        let replies = self.dump(
            &|| "list neighbours".into(),
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour_from(&n),
                _ => None,
            })
            .collect())
    }

    /// Add or replace a neighbour entry.
    pub fn add_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(n.ip);
        m.header.ifindex = n.index;
        m.header.state = NeighbourState::from(n.state);
        m.header.flags = netlink_packet_route::neighbour::NeighbourFlags::from_bits_retain(n.flags);
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(NeighbourAttribute::Destination(match n.ip {
                IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
                IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
            }));
        if let Some(mac) = &n.mac {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.clone()));
        }
        self.execute(
            &|| format!("add neighbour {} on link {}", n.ip, n.index),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
    }

    fn ingress_qdisc(index: u32) -> TcMessage {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::INGRESS;
        m.header.handle = INGRESS_HANDLE;
        m.attributes.push(TcAttribute::Kind("ingress".into()));
        m
    }

    /// `tc qdisc add dev <index> ingress`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        self.execute(
            &|| format!("add an ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(Self::ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `tc qdisc del dev <index> ingress`: its filters go with it.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        self.execute(
            &|| format!("delete the ingress qdisc of link {index}"),
            RouteNetlinkMessage::DelQueueDiscipline(Self::ingress_qdisc(index)),
            0,
        )
    }

    /// `tc filter add dev <from> parent ffff: protocol all u32 match u8 0 0
    /// action mirred egress redirect dev <to>`: every frame that arrives on
    /// `from` leaves through `to`.
    pub fn add_redirect_filter(&mut self, from: u32, to: u32) -> Result<()> {
        let mut m = TcMessage::with_index(from as i32);
        m.header.parent = INGRESS_HANDLE;
        // tcm_info: priority (0: the kernel picks) << 16 | protocol, in
        // network byte order as tc sends it.
        m.header.info = u32::from(ETH_P_ALL.to_be());
        m.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        // One key with mask 0: matches everything.
        selector.keys = vec![TcU32Key::default()];
        let mut mirror = TcMirror::default();
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.tab = 1;
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.execute(
            &|| format!("add a tc redirect filter from link {from} to link {to}"),
            RouteNetlinkMessage::NewTrafficFilter(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The kinds of the ingress filters of link `index` (`["u32", ...]`);
    /// empty when it has no ingress qdisc.
    pub fn ingress_filters(&mut self, index: u32) -> Result<Vec<String>> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = INGRESS_HANDLE;
        let replies = match self.dump(
            &|| format!("list the ingress filters of link {index}"),
            RouteNetlinkMessage::GetTrafficFilter(m),
        ) {
            Ok(r) => r,
            Err(e) if e.errno() == Some(libc::EINVAL) || e.errno() == Some(libc::ENOENT) => {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) => {
                    f.attributes.iter().find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn describe_route(r: &Route) -> String {
    let dest = match r.destination {
        Some((ip, prefix)) => format!("{ip}/{prefix}"),
        None => "default".into(),
    };
    match r.gateway {
        Some(gw) => format!("{dest} via {gw} on link {}", r.index),
        None => format!("{dest} on link {}", r.index),
    }
}

fn link_from(m: LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: Vec::new(),
        mtu: 0,
        flags: m.header.flags.bits(),
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(mac) => link.mac = mac,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(kind) = i {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn address_from(m: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address on point-to-point links,
    // where IFA_ADDRESS is the peer's; elsewhere both are the same.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Some(Address {
        index: m.header.index,
        ip: local.or(address)?,
        prefix: m.header.prefix_len,
    })
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_from(m: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(m.header.table);
    let mut route = Route {
        index: 0,
        destination: None,
        gateway: None,
        source: None,
        scope: m.header.scope.into(),
        kernel: m.header.protocol == RouteProtocol::Kernel,
    };
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => route.index = *i,
            RouteAttribute::Destination(d) => {
                route.destination = Some((route_address(d)?, m.header.destination_prefix_length))
            }
            RouteAttribute::Gateway(g) => route.gateway = route_address(g),
            RouteAttribute::PrefSource(s) => route.source = route_address(s),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(route)
}

fn neighbour_from(m: &NeighbourMessage) -> Option<Neighbour> {
    let ip = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })?;
    let mac = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
        _ => None,
    });
    Some(Neighbour {
        index: m.header.ifindex,
        ip,
        mac,
        state: m.header.state.into(),
        flags: m.header.flags.bits(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_through_the_parser() {
        let route = Route {
            index: 2,
            destination: None,
            gateway: Some("10.0.0.1".parse().unwrap()),
            source: None,
            scope: 0,
            kernel: false,
        };
        let m = Netlink::route_message(&route);
        let back = route_from(&m).expect("a main-table unicast route");
        assert_eq!(back, route);
        assert_eq!(describe_route(&route), "default via 10.0.0.1 on link 2");
    }

    #[test]
    fn address_prefers_the_local_address() {
        let a = Address {
            index: 3,
            ip: "fd00::2".parse().unwrap(),
            prefix: 64,
        };
        let m = Netlink::address_message(&a);
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert_eq!(address_from(&m), Some(a));
    }

    /// Needs root: works in a scratch named netns, deleted afterwards.
    #[test]
    #[ignore = "needs root and `ip netns`"]
    fn links_addresses_and_tc_redirect_on_a_veth_in_a_scratch_netns() {
        let ns = crate::scratch::ScratchNetns::new("rtnl-test");
        let ip = crate::scratch::ip;
        let result = in_netns(&ns.path(), || -> Result<Vec<String>> {
            ip(&["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
            let mut nl = Netlink::open()?;
            let a = nl.link_by_name("a0")?;
            let b = nl.link_by_name("b0")?;
            assert_eq!(a.kind.as_deref(), Some("veth"));
            nl.set_link(a.index, None, Some(1400), Some(true))?;
            nl.add_address(&Address {
                index: a.index,
                ip: "10.9.9.1".parse().unwrap(),
                prefix: 24,
            })?;
            assert!(nl
                .addresses()?
                .iter()
                .any(|x| x.index == a.index && x.prefix == 24));
            nl.add_ingress_qdisc(a.index)?;
            nl.add_redirect_filter(a.index, b.index)?;
            let filters = nl.ingress_filters(a.index)?;
            nl.delete_ingress_qdisc(a.index)?;
            assert!(nl.ingress_filters(a.index)?.is_empty());
            assert_eq!(nl.link_by_name("a0")?.mtu, 1400);
            Ok(filters)
        });
        drop(ns);
        let filters = result.unwrap().unwrap();
        assert!(filters.iter().any(|k| k == "u32"), "{filters:?}");
    }
}
