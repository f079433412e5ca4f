//! The agent API shared by the guest agent (server) and the runtime (client).
//!
//! Generated at build time from `protos/*.proto` by ttrpc-codegen (pure Rust,
//! no protoc). The wire contract is upstream Kata Containers' agent API:
//! package `grpc`, services `grpc.AgentService` and `grpc.Health`, with the
//! same method names, message names and field numbers, for the subset that is
//! declared here.
//!
//! Modules:
//! - [`agent`], [`health`], [`oci`], [`types`]: protobuf messages.
//! - [`agent_ttrpc`], [`health_ttrpc`]: ttrpc (sync) clients
//!   (`AgentServiceClient`, `HealthClient`), server traits (`AgentService`,
//!   `Health`) and `create_agent_service` / `create_health` to register them.
//! - [`empty`]: `google.protobuf.Empty`, as the generated services name it.
//! - [`requests`]: socket-free decoding of one request frame (fuzzing, tools).
//! - [`ids`]: the container/exec/sandbox id rule both sides apply.
//! - [`metrics`]: label values both sides of the metrics use.

// The generated code's own inner `#![allow]`s are stripped by build.rs (they
// cannot appear in an `include!`), so they are restated here.
#![allow(
    clippy::all,
    unknown_lints,
    unused_mut,
    unused_imports,
    dead_code,
    missing_docs
)]
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts
)]

/// `google.protobuf.Empty`: the generated service code refers to it as
/// `super::empty::Empty`; it is protobuf's own well-known type.
pub mod empty {
    pub use protobuf::well_known_types::empty::Empty;
}

/// Messages of `agent.proto` (grpc.AgentService requests and replies).
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc client and server glue of `grpc.AgentService`.
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// Messages of `health.proto`.
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}

/// ttrpc client and server glue of `grpc.Health`.
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}

/// The OCI runtime spec messages carried by CreateContainer / ExecProcess.
pub mod oci {
    include!(concat!(env!("OUT_DIR"), "/oci.rs"));
}

/// Shared enums (package `types`).
pub mod types {
    include!(concat!(env!("OUT_DIR"), "/types.rs"));
}

pub mod ids;
pub mod kernel_modules;
pub mod metrics;
pub mod requests;

/// Fully qualified ttrpc service names, as they appear on the wire.
pub const AGENT_SERVICE: &str = "grpc.AgentService";
/// See [`AGENT_SERVICE`].
pub const HEALTH_SERVICE: &str = "grpc.Health";

/// The largest rule set (`SetIPTablesRequest.data`) the agent takes, 1 MiB:
/// a guest's whole filter fits many times over, and the shim and
/// `kata-runtime iptables set` refuse larger ones before sending them.
pub const MAX_IPTABLES_DATA: usize = 1 << 20;
