//! The agent API's network messages (`types.Interface`, `types.Route`,
//! `types.ARPNeighbor`) from and to what netlink lists: the runtime sends
//! what it found in the pod's namespace, the agent applies it and answers
//! with what the guest then has.

use std::net::IpAddr;

use protocols::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route as ProtoRoute};

use crate::{Address, Link, Neighbour, Route};

/// A request field that does not parse: `field` names it as the agent API
/// does (`interface.IPAddresses[0].mask`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `aa:bb:cc:dd:ee:ff` (either case) to six bytes.
pub fn parse_mac(field: &str, text: &str) -> Result<Vec<u8>, FieldError> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .filter(|b: &Vec<u8>| b.len() == 6)
        .ok_or_else(|| {
            field_error(
                field,
                format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            )
        })?;
    Ok(bytes)
}

fn ip_family(ip: IpAddr) -> IPFamily {
    match ip {
        IpAddr::V4(_) => IPFamily::v4,
        IpAddr::V6(_) => IPFamily::v6,
    }
}

/// A prefix length within the family's bits.
fn parse_prefix(field: &str, ip: IpAddr, text: &str) -> Result<u8, FieldError> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    text.parse::<u8>()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| {
            field_error(
                field,
                format!("{text:?} is not a prefix length of {ip} (0 to {max})"),
            )
        })
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| field_error(field, format!("{text:?} is not an IP address")))
}

pub fn ip_address(a: &Address) -> IPAddress {
    let mut p = IPAddress::new();
    p.family = ip_family(a.ip).into();
    p.address = a.ip.to_string();
    p.mask = a.prefix.to_string();
    p
}

/// `field` is where `p` sits in the request, for errors.
pub fn parse_ip_address(field: &str, p: &IPAddress) -> Result<(IpAddr, u8), FieldError> {
    let ip = parse_ip(&format!("{field}.address"), &p.address)?;
    let prefix = parse_prefix(&format!("{field}.mask"), ip, &p.mask)?;
    Ok((ip, prefix))
}

/// Link-local IPv6 addresses and routes are the kernel's own on each side
/// (from the MAC): they are neither sent to the guest nor replaced there.
pub fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The interface as the agent API describes it; `addresses` are all the
/// link's addresses (others are skipped), link-local IPv6 ones left out.
pub fn interface(link: &Link, addresses: &[Address]) -> Interface {
    let mut i = Interface::new();
    i.device = link.name.clone();
    i.name = link.name.clone();
    i.mtu = u64::from(link.mtu);
    i.hwAddr = format_mac(&link.mac);
    i.type_ = link.kind.clone().unwrap_or_default();
    i.raw_flags = link.flags;
    i.IPAddresses = addresses
        .iter()
        .filter(|a| a.index == link.index && !is_ipv6_link_local(a.ip))
        .map(ip_address)
        .collect();
    i
}

/// `device` is the name of the route's output link.
pub fn route(r: &Route, device: &str) -> ProtoRoute {
    let mut p = ProtoRoute::new();
    p.dest = match r.destination {
        Some((ip, prefix)) => format!("{ip}/{prefix}"),
        None => String::new(),
    };
    p.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
    p.source = r.source.map(|s| s.to_string()).unwrap_or_default();
    p.device = device.into();
    p.scope = u32::from(r.scope);
    p.family = if r.is_ipv6() {
        IPFamily::v6
    } else {
        IPFamily::v4
    }
    .into();
    p
}

/// A route of the request, its output link given by `index_of(device)`.
pub fn parse_route(
    field: &str,
    p: &ProtoRoute,
    index_of: impl Fn(&str) -> Option<u32>,
) -> Result<Route, FieldError> {
    let destination = match p.dest.as_str() {
        "" | "default" => None,
        dest => {
            let (ip, prefix) = dest.split_once('/').unwrap_or((dest, ""));
            let ip = parse_ip(&format!("{field}.dest"), ip)?;
            let prefix = if prefix.is_empty() {
                if ip.is_ipv4() {
                    32
                } else {
                    128
                }
            } else {
                parse_prefix(&format!("{field}.dest"), ip, prefix)?
            };
            Some((ip, prefix))
        }
    };
    let gateway = match p.gateway.as_str() {
        "" => None,
        gw => Some(parse_ip(&format!("{field}.gateway"), gw)?),
    };
    let source = match p.source.as_str() {
        "" => None,
        src => Some(parse_ip(&format!("{field}.source"), src)?),
    };
    if destination.is_none() && gateway.is_none() {
        return Err(field_error(
            format!("{field}.gateway"),
            "a default route needs a gateway",
        ));
    }
    let scope = u8::try_from(p.scope).map_err(|_| {
        field_error(
            format!("{field}.scope"),
            format!("{} is not an rtnetlink scope (0 to 255)", p.scope),
        )
    })?;
    let index = index_of(&p.device).ok_or_else(|| {
        field_error(
            format!("{field}.device"),
            format!("no interface named {:?} in the guest", p.device),
        )
    })?;
    Ok(Route {
        index,
        destination,
        gateway,
        source,
        scope,
        kernel: false,
    })
}

pub fn neighbour(n: &Neighbour, device: &str) -> ARPNeighbor {
    let mut p = ARPNeighbor::new();
    let prefix = if n.ip.is_ipv4() { 32 } else { 128 };
    p.toIPAddress = protobuf::MessageField::some(ip_address(&Address {
        index: n.index,
        ip: n.ip,
        prefix,
    }));
    p.device = device.into();
    p.lladdr = n.mac.as_deref().map(format_mac).unwrap_or_default();
    p.state = i32::from(n.state);
    p.flags = i32::from(n.flags);
    p
}

pub fn parse_neighbour(
    field: &str,
    p: &ARPNeighbor,
    index_of: impl Fn(&str) -> Option<u32>,
) -> Result<Neighbour, FieldError> {
    let to = p
        .toIPAddress
        .as_ref()
        .ok_or_else(|| field_error(format!("{field}.toIPAddress"), "missing"))?;
    let ip = parse_ip(&format!("{field}.toIPAddress.address"), &to.address)?;
    let mac = match p.lladdr.as_str() {
        "" => None,
        mac => Some(parse_mac(&format!("{field}.lladdr"), mac)?),
    };
    let state = u16::try_from(p.state).map_err(|_| {
        field_error(
            format!("{field}.state"),
            format!("{} is not a NUD_* state", p.state),
        )
    })?;
    let flags = u8::try_from(p.flags).map_err(|_| {
        field_error(
            format!("{field}.flags"),
            format!("{} is not a set of NTF_* flags", p.flags),
        )
    })?;
    let index = index_of(&p.device).ok_or_else(|| {
        field_error(
            format!("{field}.device"),
            format!("no interface named {:?} in the guest", p.device),
        )
    })?;
    Ok(Neighbour {
        index,
        ip,
        mac,
        state,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0(name: &str) -> Option<u32> {
        (name == "eth0").then_some(2)
    }

    #[test]
    fn macs_round_trip_and_bad_ones_name_the_field() {
        let mac = parse_mac("interface.hwAddr", "0A:1b:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&mac), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a:1b:2c:3d:4e:zz",
            "a:1b:2c:3d:4e:5f",
        ] {
            let e = parse_mac("interface.hwAddr", bad).unwrap_err();
            assert_eq!(e.field, "interface.hwAddr", "{bad}");
        }
    }

    #[test]
    fn interface_carries_addresses_of_its_link_only() {
        let link = Link {
            index: 2,
            name: "eth0".into(),
            kind: Some("veth".into()),
            mac: vec![2, 0, 0, 0, 0, 1],
            mtu: 1450,
            flags: 0x1003,
        };
        let addrs = [
            Address {
                index: 2,
                ip: "10.213.1.2".parse().unwrap(),
                prefix: 24,
            },
            Address {
                index: 2,
                ip: "fe80::1".parse().unwrap(),
                prefix: 64,
            },
            Address {
                index: 3,
                ip: "10.0.0.9".parse().unwrap(),
                prefix: 8,
            },
        ];
        let i = interface(&link, &addrs);
        assert_eq!(i.name, "eth0");
        assert_eq!(i.hwAddr, "02:00:00:00:00:01");
        assert_eq!(i.mtu, 1450);
        assert_eq!(i.IPAddresses.len(), 1);
        assert_eq!(i.IPAddresses[0].address, "10.213.1.2");
        assert_eq!(i.IPAddresses[0].mask, "24");
        assert_eq!(
            parse_ip_address("a", &i.IPAddresses[0]).unwrap(),
            ("10.213.1.2".parse().unwrap(), 24)
        );
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let mut p = IPAddress::new();
        p.address = "10.0.0.300".into();
        p.mask = "24".into();
        assert_eq!(
            parse_ip_address("interface.IPAddresses[0]", &p)
                .unwrap_err()
                .field,
            "interface.IPAddresses[0].address"
        );
        p.address = "10.0.0.3".into();
        p.mask = "33".into();
        let e = parse_ip_address("interface.IPAddresses[0]", &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface.IPAddresses[0].mask: \"33\" is not a prefix length of 10.0.0.3 (0 to 32)"
        );
        p.address = "fd00::3".into();
        p.mask = "64".into();
        assert!(parse_ip_address("x", &p).is_ok());
    }

    #[test]
    fn routes_round_trip_and_default_has_two_spellings() {
        let r = Route {
            index: 2,
            destination: Some(("10.213.1.0".parse().unwrap(), 24)),
            gateway: None,
            source: Some("10.213.1.2".parse().unwrap()),
            scope: 253,
            kernel: false,
        };
        let p = route(&r, "eth0");
        assert_eq!(p.dest, "10.213.1.0/24");
        assert_eq!(parse_route("routes[0]", &p, eth0).unwrap(), r);

        let mut d = ProtoRoute::new();
        d.gateway = "10.213.1.1".into();
        d.device = "eth0".into();
        let empty = parse_route("routes[1]", &d, eth0).unwrap();
        d.dest = "default".into();
        assert_eq!(parse_route("routes[1]", &d, eth0).unwrap(), empty);
        assert_eq!(empty.destination, None);
        assert_eq!(route(&empty, "eth0").dest, "");
    }

    #[test]
    fn bad_routes_name_the_field() {
        let mut p = ProtoRoute::new();
        p.device = "eth0".into();
        let e = parse_route("routes.Routes[0]", &p, eth0).unwrap_err();
        assert_eq!(e.field, "routes.Routes[0].gateway");
        p.dest = "10.0.0.0/40".into();
        assert_eq!(parse_route("r", &p, eth0).unwrap_err().field, "r.dest");
        p.dest = "10.0.0.0/8".into();
        p.device = "eth9".into();
        let e = parse_route("r", &p, eth0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.device: no interface named \"eth9\" in the guest"
        );
        p.device = "eth0".into();
        p.scope = 300;
        assert_eq!(parse_route("r", &p, eth0).unwrap_err().field, "r.scope");
    }

    #[test]
    fn neighbours_round_trip() {
        let n = Neighbour {
            index: 2,
            ip: "10.213.1.1".parse().unwrap(),
            mac: Some(vec![2, 0, 0, 0, 0, 2]),
            state: crate::NUD_PERMANENT,
            flags: 0,
        };
        let p = neighbour(&n, "eth0");
        assert_eq!(p.lladdr, "02:00:00:00:00:02");
        assert_eq!(
            parse_neighbour("neighbors.ARPNeighbors[0]", &p, eth0).unwrap(),
            n
        );
        let mut bad = p.clone();
        bad.toIPAddress = protobuf::MessageField::none();
        assert_eq!(
            parse_neighbour("n", &bad, eth0).unwrap_err().field,
            "n.toIPAddress"
        );
        let mut bad = p;
        bad.state = -1;
        assert_eq!(
            parse_neighbour("n", &bad, eth0).unwrap_err().field,
            "n.state"
        );
    }
}
