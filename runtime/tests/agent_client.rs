//! The agent client against an in-process ttrpc server implementing the
//! generated services, reached directly over a unix socket and through a
//! fake hybrid vsock endpoint that refuses the first connections (as the
//! real one does while the guest agent is not listening yet).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocols::agent::{CreateSandboxRequest, GuestDetailsRequest, GuestDetailsResponse};
use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use runtime::agent_client::{AgentAddress, AgentClient, AgentError};

#[derive(Default)]
struct FakeAgent {
    check_delay: Duration,
    sandboxes: Mutex<Vec<String>>,
}

impl protocols::health_ttrpc::Health for FakeAgent {
    fn check(
        &self,
        _: &ttrpc::TtrpcContext,
        _: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        std::thread::sleep(self.check_delay);
        let mut r = HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }
    fn version(
        &self,
        _: &ttrpc::TtrpcContext,
        _: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        let mut r = VersionCheckResponse::new();
        r.agent_version = "fake-agent-1".into();
        r.grpc_version = "0.9".into();
        Ok(r)
    }
}

impl protocols::agent_ttrpc::AgentService for FakeAgent {
    fn create_sandbox(
        &self,
        _: &ttrpc::TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<protocols::empty::Empty> {
        self.sandboxes.lock().unwrap().push(req.sandbox_id.clone());
        Ok(protocols::empty::Empty::new())
    }
    fn get_guest_details(
        &self,
        _: &ttrpc::TtrpcContext,
        _: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let mut r = GuestDetailsResponse::new();
        r.mem_block_size_bytes = 128 << 20;
        Ok(r)
    }
}

fn serve(agent: Arc<FakeAgent>, path: &Path) -> ttrpc::Server {
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(protocols::health_ttrpc::create_health(agent.clone()))
        .register_service(protocols::agent_ttrpc::create_agent_service(agent));
    server.start().unwrap();
    server
}

/// Fake hybrid vsock endpoint: closes the first `refusals` connections after
/// their CONNECT line, then answers OK and splices to `target`.
fn fake_hybrid_vsock(
    listener: UnixListener,
    target: PathBuf,
    refusals: usize,
    seen: Arc<AtomicUsize>,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || line != "CONNECT 1024\n" {
                continue;
            }
            if seen.fetch_add(1, Ordering::SeqCst) < refusals {
                continue; // dropped: "nothing listens on that port"
            }
            let upstream = UnixStream::connect(&target).unwrap();
            (&conn).write_all(b"OK 1073741825\n").unwrap();
            let (c2, u2) = (conn.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut reader, &mut &upstream));
            std::thread::spawn(move || std::io::copy(&mut &u2, &mut &c2));
        }
    });
}

#[test]
fn unix_socket_calls() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = Arc::new(FakeAgent::default());
    let _server = serve(agent.clone(), &sock);
    let addr = AgentAddress::Unix(sock);
    let client =
        AgentClient::connect(&addr, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    assert_eq!(
        client.check().unwrap().status.enum_value(),
        Ok(ServingStatus::SERVING)
    );
    assert_eq!(client.version().unwrap().agent_version, "fake-agent-1");
    assert_eq!(
        client
            .get_guest_details(&GuestDetailsRequest::new())
            .unwrap()
            .mem_block_size_bytes,
        128 << 20
    );
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb-42".into();
    client.create_sandbox(&req).unwrap();
    assert_eq!(*agent.sandboxes.lock().unwrap(), ["sb-42"]);
    // Not implemented by the fake: the generated default answers NOT_FOUND.
    match client.destroy_sandbox() {
        Err(AgentError::Rpc {
            method: "DestroySandbox",
            detail,
            ..
        }) => assert!(detail.contains("NOT_FOUND"), "{detail}"),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[test]
fn call_timeout_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("slow.sock");
    let agent = Arc::new(FakeAgent {
        check_delay: Duration::from_secs(3),
        ..Default::default()
    });
    let _server = serve(agent, &sock);
    let client = AgentClient::connect(
        &AgentAddress::Unix(sock),
        Duration::from_secs(2),
        Duration::from_millis(300),
    )
    .unwrap();
    let t = Instant::now();
    let err = client.check().unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::CallTimeout {
                method: "Check",
                ..
            }
        ),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn wait_serving_retries_through_hybrid_vsock_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let uds = dir.path().join("vsock.sock");
    let seen = Arc::new(AtomicUsize::new(0));
    fake_hybrid_vsock(
        UnixListener::bind(&uds).unwrap(),
        agent_sock.clone(),
        3,
        seen.clone(),
    );
    let _server = serve(Arc::new(FakeAgent::default()), &agent_sock);
    let addr: AgentAddress = format!("hvsock://{}:1024", uds.display()).parse().unwrap();
    let client = AgentClient::wait_serving(
        &addr,
        Duration::from_secs(20),
        Duration::from_secs(5),
        || Ok(()),
    )
    .unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "three refused attempts, then the one that served"
    );
    assert_eq!(client.version().unwrap().agent_version, "fake-agent-1");
}

#[test]
fn wait_serving_gives_up_at_its_deadline_with_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    fake_hybrid_vsock(
        UnixListener::bind(&uds).unwrap(),
        dir.path().join("none"),
        usize::MAX,
        Arc::new(AtomicUsize::new(0)),
    );
    let addr = AgentAddress::HybridVsock {
        uds_path: uds,
        port: 1024,
    };
    let t = Instant::now();
    let err = AgentClient::wait_serving(
        &addr,
        Duration::from_secs(1),
        Duration::from_secs(1),
        || Ok(()),
    )
    .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let msg = err.to_string();
    assert!(
        msg.contains("SERVING") && msg.contains("nothing listens on guest port 1024"),
        "{msg}"
    );
}

#[test]
fn agent_ctl_binary() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = Arc::new(FakeAgent::default());
    let _server = serve(agent.clone(), &sock);
    let addr = format!("unix://{}", sock.display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kata-runtime"))
            .arg("agent-ctl")
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&["--addr", &addr, "Version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["agent_version"], "fake-agent-1");

    let out = run(&[
        "--addr",
        &addr,
        "createsandbox",
        r#"{"sandbox_id": "from-cli", "hostname": "h"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(*agent.sandboxes.lock().unwrap(), ["from-cli"]);

    let out = run(&["--addr", &addr, "GetGuestDetails"]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply["mem_block_size_bytes"],
        (128u64 << 20).to_string(),
        "uint64 prints as a JSON string"
    );

    // Bad input: exit status 2, one line naming the problem.
    let out = run(&["--addr", &addr, "CreateSandbox", r#"{"no_such_field": 1}"#]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad arguments for CreateSandbox"));
    let out = run(&["--addr", "tcp://x", "Check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--addr", &addr, "Reboot"]);
    assert_eq!(out.status.code(), Some(2));
    // Call failure: exit status 1.
    let out = run(&[
        "--addr",
        &format!("unix://{}/absent.sock", dir.path().display()),
        "Check",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to the agent"));
}
