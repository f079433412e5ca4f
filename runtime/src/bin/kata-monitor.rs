//! `kata-monitor`: every sandbox's metrics on one HTTP endpoint
//! (`127.0.0.1:8090` by default), as upstream's; see `runtime::kata_monitor`.
//!
//! Options are upstream's, also in Go's one-dash spelling
//! (`-listen-address`), so existing units and scripts work unchanged.
//! `-runtime-endpoint` is accepted and ignored with a warning: this monitor
//! does not read pod names from the CRI.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use runtime::kata_monitor::{Monitor, DEFAULT_LISTEN_ADDRESS};
use runtime::shim::monitor::SANDBOXES_DIR;

#[derive(Parser)]
#[command(
    name = "kata-monitor",
    version,
    about = "Kata Containers sandboxes' metrics on one endpoint"
)]
struct Args {
    /// Where to serve HTTP (host:port).
    #[arg(long, default_value = DEFAULT_LISTEN_ADDRESS)]
    listen_address: String,
    /// Upstream's CRI endpoint for pod names: accepted, not used.
    #[arg(long)]
    runtime_endpoint: Option<String>,
    /// Upstream's log level option: accepted, not used (warnings go to stderr).
    #[arg(long)]
    log_level: Option<String>,
}

/// `-listen-address` -> `--listen-address` (Go's flag package takes both).
fn normalised_args() -> Vec<String> {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let go_style = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && ["listen-address", "runtime-endpoint", "log-level"]
                    .iter()
                    .any(|o| a[1..] == **o || a[1..].starts_with(&format!("{o}=")));
            if go_style {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let args = Args::parse_from(normalised_args());
    if args.runtime_endpoint.is_some() {
        eprintln!("kata-monitor: --runtime-endpoint ignored: this monitor labels samples with sandbox_id only, not with CRI pod names");
    }
    let server = match tiny_http::Server::http(&args.listen_address) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "kata-monitor: cannot listen on {} (--listen-address): {e}",
                args.listen_address
            );
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "kata-monitor: serving http://{} for the sandboxes in {SANDBOXES_DIR}",
        args.listen_address
    );
    let monitor = Arc::new(Monitor::new(SANDBOXES_DIR));
    for request in server.incoming_requests() {
        let monitor = monitor.clone();
        // A slow shim must not hold up the other requests.
        std::thread::spawn(move || {
            let answer = if *request.method() == tiny_http::Method::Get {
                monitor.respond(request.url())
            } else {
                runtime::kata_monitor::Answer {
                    status: 405,
                    content_type: "text/plain; charset=utf-8",
                    body: format!("{}: only GET is served\n", request.method()),
                }
            };
            let header = tiny_http::Header::from_bytes("Content-Type", answer.content_type)
                .expect("a valid header");
            let response = tiny_http::Response::from_string(answer.body)
                .with_status_code(answer.status)
                .with_header(header);
            if let Err(e) = request.respond(response) {
                eprintln!("kata-monitor: answer: {e}");
            }
        });
    }
    ExitCode::SUCCESS
}
