//! `kata-runtime`: host-side command line of the Kata rewrite.
//!
//! Subcommands:
//! - `agent-ctl`: one call to a guest agent (after kata-agent-ctl): the
//!   request is given as protobuf JSON, the reply is printed as JSON.
//!
//! `check` (host capabilities) and `env` (configuration dump) come next.
//!
//! Exit status: 0 success, 1 the call failed, 2 bad usage or bad input.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use protobuf::MessageFull;
use protobuf_json_mapping::{parse_from_str, print_to_string_with_options, PrintOptions};

use protocols::agent::{
    CreateSandboxRequest, DestroySandboxRequest, GuestDetailsRequest, OnlineCPUMemRequest,
    SetGuestDateTimeRequest,
};
use protocols::health::CheckRequest;
use runtime::agent_client::{AgentAddress, AgentClient, DEFAULT_CONNECT_TIMEOUT};

#[derive(Parser)]
#[command(
    name = "kata-runtime",
    version,
    about = "Kata Containers host runtime tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Call the guest agent once and print the reply as JSON.
    AgentCtl(AgentCtlArgs),
}

#[derive(clap::Args)]
struct AgentCtlArgs {
    /// Agent address: unix:///PATH, hvsock:///PATH/vsock.sock:1024 or vsock://CID:1024.
    #[arg(long)]
    addr: String,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Retry connecting until the agent reports SERVING, for up to this many
    /// seconds (0: a single attempt).
    #[arg(long, default_value_t = 0)]
    wait: u64,
    /// Check, Version, GetGuestDetails, CreateSandbox, DestroySandbox,
    /// OnlineCPUMem or SetGuestDateTime (case-insensitive).
    call: String,
    /// The request as protobuf JSON, e.g. '{"sandbox_id": "s1", "hostname": "h"}'.
    /// Default: an empty request (SetGuestDateTime: the host's current time).
    args: Option<String>,
}

/// Failure classes mapped to the exit status.
enum Failure {
    Usage(String),
    Call(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::AgentCtl(args) => agent_ctl(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("kata-runtime: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Call(msg)) => {
            eprintln!("kata-runtime: {msg}");
            ExitCode::from(1)
        }
    }
}

fn parse_request<M: MessageFull>(call: &str, args: Option<&str>) -> Result<M, Failure> {
    match args {
        None => Ok(M::new()),
        Some(json) => parse_from_str::<M>(json).map_err(|e| {
            Failure::Usage(format!(
                "bad arguments for {call}: {e}; expected protobuf JSON for {}",
                M::descriptor().full_name()
            ))
        }),
    }
}

fn to_json<M: MessageFull>(reply: &M) -> Result<String, Failure> {
    let options = PrintOptions {
        proto_field_name: true,
        always_output_default_values: true,
        ..Default::default()
    };
    print_to_string_with_options(reply, &options)
        .map_err(|e| Failure::Call(format!("cannot print the reply as JSON: {e}")))
}

fn agent_ctl(a: AgentCtlArgs) -> Result<(), Failure> {
    let address: AgentAddress = a
        .addr
        .parse()
        .map_err(|e: String| Failure::Usage(format!("--addr: {e}")))?;
    let call_timeout = Duration::from_secs(a.timeout.max(1));
    let args = a.args.as_deref();
    let call = a.call.to_ascii_lowercase();

    // Validate the request before touching the network.
    enum Req {
        Check,
        Version,
        GuestDetails(GuestDetailsRequest),
        CreateSandbox(CreateSandboxRequest),
        DestroySandbox,
        OnlineCpuMem(OnlineCPUMemRequest),
        SetGuestDateTime(SetGuestDateTimeRequest),
    }
    let req = match call.as_str() {
        "check" => parse_request::<CheckRequest>(&a.call, args).map(|_| Req::Check)?,
        "version" => parse_request::<CheckRequest>(&a.call, args).map(|_| Req::Version)?,
        "getguestdetails" => Req::GuestDetails(parse_request(&a.call, args)?),
        "createsandbox" => Req::CreateSandbox(parse_request(&a.call, args)?),
        "destroysandbox" => parse_request::<DestroySandboxRequest>(&a.call, args).map(|_| Req::DestroySandbox)?,
        "onlinecpumem" => Req::OnlineCpuMem(parse_request(&a.call, args)?),
        "setguestdatetime" => {
            let mut r: SetGuestDateTimeRequest = parse_request(&a.call, args)?;
            if args.is_none() {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                r.Sec = now.as_secs() as i64;
                r.Usec = now.subsec_micros() as i64;
            }
            Req::SetGuestDateTime(r)
        }
        _ => {
            return Err(Failure::Usage(format!(
                "unknown call {:?}: use Check, Version, GetGuestDetails, CreateSandbox, DestroySandbox, OnlineCPUMem or SetGuestDateTime",
                a.call
            )))
        }
    };

    let client = if a.wait > 0 {
        AgentClient::wait_serving(&address, Duration::from_secs(a.wait), call_timeout, || {
            Ok(())
        })
    } else {
        AgentClient::connect(&address, DEFAULT_CONNECT_TIMEOUT, call_timeout)
    }
    .map_err(|e| Failure::Call(e.to_string()))?;

    let fail = |e: runtime::agent_client::AgentError| Failure::Call(e.to_string());
    let empty = protobuf::well_known_types::empty::Empty::new();
    let json = match req {
        Req::Check => to_json(&client.check().map_err(fail)?)?,
        Req::Version => to_json(&client.version().map_err(fail)?)?,
        Req::GuestDetails(r) => to_json(&client.get_guest_details(&r).map_err(fail)?)?,
        Req::CreateSandbox(r) => client
            .create_sandbox(&r)
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
        Req::DestroySandbox => client
            .destroy_sandbox()
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
        Req::OnlineCpuMem(r) => client
            .online_cpu_mem(&r)
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
        Req::SetGuestDateTime(r) => client
            .set_guest_date_time(&r)
            .map_err(fail)
            .and_then(|_| to_json(&empty))?,
    };
    println!("{json}");
    Ok(())
}
