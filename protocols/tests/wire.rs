//! Wire-compatibility checks against upstream Kata's agent API.
//!
//! The expected tag bytes are computed from the field numbers and wire types
//! of upstream's agent.proto / health.proto / oci.proto (tag = number << 3 |
//! wire type), so a renumbered field here makes these tests fail.

use std::collections::BTreeSet;
use std::sync::Arc;

use protobuf::Message;
use protocols::{agent, agent_ttrpc, health, health_ttrpc, oci};

const VARINT: u8 = 0;
const LEN: u8 = 2;

fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

#[test]
fn create_sandbox_request_field_numbers() {
    // upstream: hostname = 1, dns = 2, sandbox_pidns = 4, sandbox_id = 5
    let mut req = agent::CreateSandboxRequest::new();
    req.hostname = "h".into();
    req.dns = vec!["nameserver 1.1.1.1".into()];
    req.sandbox_pidns = true;
    req.sandbox_id = "sb".into();
    let bytes = req.write_to_bytes().unwrap();
    let mut expected = vec![tag(1, LEN), 1, b'h', tag(2, LEN), 18];
    expected.extend_from_slice(b"nameserver 1.1.1.1");
    expected.extend_from_slice(&[tag(4, VARINT), 1, tag(5, LEN), 2, b's', b'b']);
    assert_eq!(bytes, expected);

    let back = agent::CreateSandboxRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, req);
}

#[test]
fn storage_and_guest_details_field_numbers() {
    // upstream Storage: driver = 1, mount_point = 6
    let mut storage = agent::Storage::new();
    storage.driver = "virtio-fs".into();
    storage.mount_point = "/m".into();
    let bytes = storage.write_to_bytes().unwrap();
    let mut expected = vec![tag(1, LEN), 9];
    expected.extend_from_slice(b"virtio-fs");
    expected.extend_from_slice(&[tag(6, LEN), 2, b'/', b'm']);
    assert_eq!(bytes, expected);

    // upstream GuestDetailsResponse: mem_block_size_bytes = 1,
    // agent_details = 2 (AgentDetails.version = 1), support_mem_hotplug_probe = 3
    let mut resp = agent::GuestDetailsResponse::new();
    resp.mem_block_size_bytes = 0x80;
    resp.agent_details.mut_or_insert_default().version = "v".into();
    resp.support_mem_hotplug_probe = true;
    let bytes = resp.write_to_bytes().unwrap();
    assert_eq!(
        bytes,
        vec![
            tag(1, VARINT),
            0x80,
            0x01,
            tag(2, LEN),
            3,
            tag(1, LEN),
            1,
            b'v',
            tag(3, VARINT),
            1
        ]
    );
}

#[test]
fn date_time_and_health_field_numbers() {
    // upstream SetGuestDateTimeRequest: Sec = 1, Usec = 2
    let mut req = agent::SetGuestDateTimeRequest::new();
    req.Sec = 3;
    req.Usec = 4;
    assert_eq!(
        req.write_to_bytes().unwrap(),
        vec![tag(1, VARINT), 3, tag(2, VARINT), 4]
    );

    // upstream ReseedRandomDevRequest: data = 2
    let mut reseed = agent::ReseedRandomDevRequest::new();
    reseed.data = vec![9, 8];
    assert_eq!(reseed.write_to_bytes().unwrap(), vec![tag(2, LEN), 2, 9, 8]);

    // upstream HealthCheckResponse: status = 1, SERVING = 1
    let mut check = health::HealthCheckResponse::new();
    check.status = health::health_check_response::ServingStatus::SERVING.into();
    assert_eq!(check.write_to_bytes().unwrap(), vec![tag(1, VARINT), 1]);

    // upstream VersionCheckResponse: grpc_version = 1, agent_version = 2
    let mut version = health::VersionCheckResponse::new();
    version.agent_version = "1".into();
    assert_eq!(
        version.write_to_bytes().unwrap(),
        vec![tag(2, LEN), 1, b'1']
    );
}

#[test]
fn iptables_field_numbers() {
    // upstream GetIPTablesRequest: is_ipv6 = 1; GetIPTablesResponse: data = 1
    let mut get = agent::GetIPTablesRequest::new();
    get.is_ipv6 = true;
    assert_eq!(get.write_to_bytes().unwrap(), vec![tag(1, VARINT), 1]);
    let mut rules = agent::GetIPTablesResponse::new();
    rules.data = b"*f".to_vec();
    assert_eq!(
        rules.write_to_bytes().unwrap(),
        vec![tag(1, LEN), 2, b'*', b'f']
    );

    // upstream SetIPTablesRequest: is_ipv6 = 1, data = 2;
    // SetIPTablesResponse: data = 1
    let mut set = agent::SetIPTablesRequest::new();
    set.is_ipv6 = true;
    set.data = b"C".to_vec();
    assert_eq!(
        set.write_to_bytes().unwrap(),
        vec![tag(1, VARINT), 1, tag(2, LEN), 1, b'C']
    );
    let mut out = agent::SetIPTablesResponse::new();
    out.data = b"x".to_vec();
    assert_eq!(out.write_to_bytes().unwrap(), vec![tag(1, LEN), 1, b'x']);
}

#[test]
fn oci_spec_field_numbers() {
    // upstream Spec: Hostname = 4, Linux = 8 (Linux.CgroupsPath = 5)
    let mut spec = oci::Spec::new();
    spec.Hostname = "c".into();
    spec.Linux.mut_or_insert_default().CgroupsPath = "/g".into();
    assert_eq!(
        spec.write_to_bytes().unwrap(),
        vec![
            tag(4, LEN),
            1,
            b'c',
            tag(8, LEN),
            4,
            tag(5, LEN),
            2,
            b'/',
            b'g'
        ]
    );
}

struct Defaults;
impl agent_ttrpc::AgentService for Defaults {}
impl health_ttrpc::Health for Defaults {}

#[test]
fn method_paths_match_upstream() {
    let agent_paths: BTreeSet<String> = agent_ttrpc::create_agent_service(Arc::new(Defaults))
        .into_keys()
        .collect();
    for method in [
        "CreateContainer",
        "StartContainer",
        "RemoveContainer",
        "ExecProcess",
        "SignalProcess",
        "WaitProcess",
        "StatsContainer",
        "PauseContainer",
        "ResumeContainer",
        "WriteStdin",
        "ReadStdout",
        "ReadStderr",
        "CloseStdin",
        "TtyWinResize",
        "CreateSandbox",
        "DestroySandbox",
        "OnlineCPUMem",
        "GetGuestDetails",
        "SetGuestDateTime",
        "ReseedRandomDev",
        "GetIPTables",
        "SetIPTables",
    ] {
        let path = format!("/{}/{method}", protocols::AGENT_SERVICE);
        assert!(
            agent_paths.contains(&path),
            "missing {path} in {agent_paths:?}"
        );
    }
    let health_paths: BTreeSet<String> = health_ttrpc::create_health(Arc::new(Defaults))
        .into_keys()
        .collect();
    let expected: BTreeSet<String> = ["/grpc.Health/Check", "/grpc.Health/Version"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(health_paths, expected);
}
