//! Server-side decoding of one ttrpc request frame, independent of any
//! socket: header, size limit, the ttrpc `Request` envelope, and the request
//! message of every declared method. The fuzzer's tests (`cargo xtask test
//! fuzz`, xtask-test/src/fuzz.rs) check their generated requests with it,
//! and it documents what a frame of the agent API looks like on the wire.

use protobuf::{Message, MessageDyn, MessageFull};
use ttrpc::{MessageHeader, Request};

use crate::{agent, health};

/// ttrpc frame header: length u32 BE, stream id u32 BE, type u8, flags u8.
pub const FRAME_HEADER_LEN: usize = 10;
/// Largest payload ttrpc accepts (4 MiB); larger frames get an error status.
pub const MAX_FRAME_PAYLOAD: usize = 4 << 20;
/// Frame type of a request.
pub const FRAME_TYPE_REQUEST: u8 = 1;

#[derive(Debug)]
pub enum DecodeError {
    /// Fewer bytes than a header, or than the header's length says.
    Truncated {
        needed: usize,
        got: usize,
    },
    Oversized(usize),
    NotARequest(u8),
    Envelope(protobuf::Error),
    UnknownMethod(String),
    Payload {
        path: String,
        error: protobuf::Error,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { needed, got } => {
                write!(f, "frame truncated: need {needed} bytes, got {got}")
            }
            DecodeError::Oversized(n) => {
                write!(f, "frame payload of {n} bytes exceeds {MAX_FRAME_PAYLOAD}")
            }
            DecodeError::NotARequest(t) => write!(f, "frame type {t} is not a request"),
            DecodeError::Envelope(e) => write!(f, "ttrpc request envelope: {e}"),
            DecodeError::UnknownMethod(p) => write!(f, "{p} does not exist"),
            DecodeError::Payload { path, error } => write!(f, "{path}: request payload: {error}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Every `/service/method` path [`decode_request`] knows.
pub const REQUEST_PATHS: &[&str] = &[
    "/grpc.Health/Check",
    "/grpc.Health/Version",
    "/grpc.AgentService/CreateContainer",
    "/grpc.AgentService/StartContainer",
    "/grpc.AgentService/RemoveContainer",
    "/grpc.AgentService/ExecProcess",
    "/grpc.AgentService/SignalProcess",
    "/grpc.AgentService/WaitProcess",
    "/grpc.AgentService/StatsContainer",
    "/grpc.AgentService/PauseContainer",
    "/grpc.AgentService/ResumeContainer",
    "/grpc.AgentService/UpdateContainer",
    "/grpc.AgentService/WriteStdin",
    "/grpc.AgentService/ReadStdout",
    "/grpc.AgentService/ReadStderr",
    "/grpc.AgentService/CloseStdin",
    "/grpc.AgentService/TtyWinResize",
    "/grpc.AgentService/CreateSandbox",
    "/grpc.AgentService/DestroySandbox",
    "/grpc.AgentService/OnlineCPUMem",
    "/grpc.AgentService/GetGuestDetails",
    "/grpc.AgentService/SetGuestDateTime",
    "/grpc.AgentService/ReseedRandomDev",
    "/grpc.AgentService/UpdateInterface",
    "/grpc.AgentService/UpdateRoutes",
    "/grpc.AgentService/ListInterfaces",
    "/grpc.AgentService/ListRoutes",
    "/grpc.AgentService/AddARPNeighbors",
    "/grpc.AgentService/GetOOMEvent",
    "/grpc.AgentService/GetMetrics",
    "/grpc.AgentService/GetVolumeStats",
    "/grpc.AgentService/ResizeVolume",
    "/grpc.AgentService/GetIPTables",
    "/grpc.AgentService/SetIPTables",
];

/// A decoded request frame.
pub struct DecodedRequest {
    pub header: MessageHeader,
    /// `/service/method`
    pub path: String,
    pub message: Box<dyn MessageDyn>,
}

fn parse<M: MessageFull>(payload: &[u8]) -> Result<Box<dyn MessageDyn>, protobuf::Error> {
    Ok(Box::new(M::parse_from_bytes(payload)?))
}

/// Decodes the request message of `/service/method`.
pub fn decode_request(path: &str, payload: &[u8]) -> Result<Box<dyn MessageDyn>, DecodeError> {
    let result = match path {
        "/grpc.Health/Check" | "/grpc.Health/Version" => parse::<health::CheckRequest>(payload),
        "/grpc.AgentService/CreateContainer" => parse::<agent::CreateContainerRequest>(payload),
        "/grpc.AgentService/StartContainer" => parse::<agent::StartContainerRequest>(payload),
        "/grpc.AgentService/RemoveContainer" => parse::<agent::RemoveContainerRequest>(payload),
        "/grpc.AgentService/ExecProcess" => parse::<agent::ExecProcessRequest>(payload),
        "/grpc.AgentService/SignalProcess" => parse::<agent::SignalProcessRequest>(payload),
        "/grpc.AgentService/WaitProcess" => parse::<agent::WaitProcessRequest>(payload),
        "/grpc.AgentService/StatsContainer" => parse::<agent::StatsContainerRequest>(payload),
        "/grpc.AgentService/PauseContainer" => parse::<agent::PauseContainerRequest>(payload),
        "/grpc.AgentService/ResumeContainer" => parse::<agent::ResumeContainerRequest>(payload),
        "/grpc.AgentService/WriteStdin" => parse::<agent::WriteStreamRequest>(payload),
        "/grpc.AgentService/ReadStdout" | "/grpc.AgentService/ReadStderr" => {
            parse::<agent::ReadStreamRequest>(payload)
        }
        "/grpc.AgentService/CloseStdin" => parse::<agent::CloseStdinRequest>(payload),
        "/grpc.AgentService/TtyWinResize" => parse::<agent::TtyWinResizeRequest>(payload),
        "/grpc.AgentService/CreateSandbox" => parse::<agent::CreateSandboxRequest>(payload),
        "/grpc.AgentService/DestroySandbox" => parse::<agent::DestroySandboxRequest>(payload),
        "/grpc.AgentService/OnlineCPUMem" => parse::<agent::OnlineCPUMemRequest>(payload),
        "/grpc.AgentService/GetGuestDetails" => parse::<agent::GuestDetailsRequest>(payload),
        "/grpc.AgentService/SetGuestDateTime" => parse::<agent::SetGuestDateTimeRequest>(payload),
        "/grpc.AgentService/ReseedRandomDev" => parse::<agent::ReseedRandomDevRequest>(payload),
        "/grpc.AgentService/UpdateContainer" => parse::<agent::UpdateContainerRequest>(payload),
        "/grpc.AgentService/UpdateInterface" => parse::<agent::UpdateInterfaceRequest>(payload),
        "/grpc.AgentService/UpdateRoutes" => parse::<agent::UpdateRoutesRequest>(payload),
        "/grpc.AgentService/ListInterfaces" => parse::<agent::ListInterfacesRequest>(payload),
        "/grpc.AgentService/ListRoutes" => parse::<agent::ListRoutesRequest>(payload),
        "/grpc.AgentService/AddARPNeighbors" => parse::<agent::AddARPNeighborsRequest>(payload),
        "/grpc.AgentService/GetOOMEvent" => parse::<agent::GetOOMEventRequest>(payload),
        "/grpc.AgentService/GetMetrics" => parse::<agent::GetMetricsRequest>(payload),
        "/grpc.AgentService/GetVolumeStats" => parse::<agent::VolumeStatsRequest>(payload),
        "/grpc.AgentService/ResizeVolume" => parse::<agent::ResizeVolumeRequest>(payload),
        "/grpc.AgentService/GetIPTables" => parse::<agent::GetIPTablesRequest>(payload),
        "/grpc.AgentService/SetIPTables" => parse::<agent::SetIPTablesRequest>(payload),
        other => return Err(DecodeError::UnknownMethod(other.to_string())),
    };
    result.map_err(|error| DecodeError::Payload {
        path: path.to_string(),
        error,
    })
}

/// Decodes one complete request frame (header + payload).
pub fn decode_request_frame(frame: &[u8]) -> Result<DecodedRequest, DecodeError> {
    if frame.len() < FRAME_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN,
            got: frame.len(),
        });
    }
    let header = MessageHeader::from(&frame[..FRAME_HEADER_LEN]);
    let length = header.length as usize;
    if length > MAX_FRAME_PAYLOAD {
        return Err(DecodeError::Oversized(length));
    }
    let body = &frame[FRAME_HEADER_LEN..];
    if body.len() < length {
        return Err(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN + length,
            got: frame.len(),
        });
    }
    if header.type_ != FRAME_TYPE_REQUEST {
        return Err(DecodeError::NotARequest(header.type_));
    }
    let request = Request::parse_from_bytes(&body[..length]).map_err(DecodeError::Envelope)?;
    let path = format!("/{}/{}", request.service, request.method);
    let message = decode_request(&path, &request.payload)?;
    Ok(DecodedRequest {
        header,
        path,
        message,
    })
}

/// Encodes a request frame as a ttrpc client would (for tests and tools).
pub fn encode_request_frame(
    stream_id: u32,
    service: &str,
    method: &str,
    message: &dyn MessageDyn,
) -> Vec<u8> {
    let mut request = Request::new();
    request.service = service.to_string();
    request.method = method.to_string();
    request.payload = message
        .write_to_bytes_dyn()
        .expect("in-memory protobuf encoding");
    let body = request
        .write_to_bytes()
        .expect("in-memory protobuf encoding");
    let header = MessageHeader {
        length: body.len() as u32,
        stream_id,
        type_: FRAME_TYPE_REQUEST,
        flags: 0,
    };
    let mut frame: Vec<u8> = header.into();
    frame.extend_from_slice(&body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_create_sandbox_frame() {
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = "sb-1".into();
        let frame = encode_request_frame(3, crate::AGENT_SERVICE, "CreateSandbox", &req);
        // header: length, stream 3, type request, no flags
        assert_eq!(&frame[4..10], &[0, 0, 0, 3, 1, 0]);
        let decoded = decode_request_frame(&frame).unwrap();
        assert_eq!(decoded.path, "/grpc.AgentService/CreateSandbox");
        let back = decoded
            .message
            .downcast_box::<agent::CreateSandboxRequest>()
            .ok()
            .unwrap();
        assert_eq!(*back, req);
    }

    #[test]
    fn request_paths_are_exactly_the_registered_methods() {
        struct Defaults;
        impl crate::agent_ttrpc::AgentService for Defaults {}
        impl crate::health_ttrpc::Health for Defaults {}
        let mut registered: Vec<String> =
            crate::agent_ttrpc::create_agent_service(std::sync::Arc::new(Defaults))
                .into_keys()
                .chain(
                    crate::health_ttrpc::create_health(std::sync::Arc::new(Defaults)).into_keys(),
                )
                .collect();
        registered.sort();
        let mut known: Vec<String> = REQUEST_PATHS.iter().map(|s| s.to_string()).collect();
        known.sort();
        assert_eq!(known, registered);
        for path in REQUEST_PATHS {
            assert!(decode_request(path, &[]).is_ok(), "{path}");
        }
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(matches!(
            decode_request_frame(&[0; 3]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut oversized = vec![0u8; FRAME_HEADER_LEN];
        oversized[..4].copy_from_slice(&((MAX_FRAME_PAYLOAD as u32) + 1).to_be_bytes());
        oversized[8] = FRAME_TYPE_REQUEST;
        assert!(matches!(
            decode_request_frame(&oversized),
            Err(DecodeError::Oversized(_))
        ));
        let frame = encode_request_frame(1, "grpc.Nope", "Nothing", &health::CheckRequest::new());
        assert!(matches!(
            decode_request_frame(&frame),
            Err(DecodeError::UnknownMethod(_))
        ));
        // a CheckRequest whose field 1 (string) claims 100 bytes it lacks
        let bad = decode_request("/grpc.Health/Check", &[0x0a, 100, b'x']);
        assert!(matches!(bad, Err(DecodeError::Payload { .. })));
    }
}
