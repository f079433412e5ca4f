//! `cargo xtask test fuzz [--seconds N] [--seed S] [--json]`: fuzzes the
//! real agent in the real guest, on the stable toolchain.
//!
//! The guest boots in QEMU exactly as `test vm` boots it (vmtest.rs), so
//! random requests can only damage a throwaway VM: the agent is PID 1 there,
//! and the same requests to an agent on the host (as root) would set the
//! clock, mount filesystems and write files. For `--seconds`, requests go
//! over a ttrpc connection to the agent:
//!
//! - generated (most of them): for every method of `grpc.AgentService` and
//!   `grpc.Health`, as the services' descriptors declare them, a request
//!   message built by protobuf reflection: a random subset of its fields set
//!   to random values of their types (interesting integers, ids, paths with
//!   `..`, very long strings, invalid enum numbers), nested messages down to
//!   [`MAX_DEPTH`], repeated and map fields with up to [`MAX_REPEATED`]
//!   elements;
//! - raw payloads: a generated message truncated or with flipped bits,
//!   random bytes, hand-made protobuf bombs (huge length prefixes, deep
//!   nesting), for real and made-up method names;
//! - raw frames, each on a connection of its own: ttrpc frames with an
//!   oversized length, an unknown type, an even stream id, a garbage
//!   envelope, a truncated header or body.
//!
//! After every request the agent must answer `Health.Check` (SERVING) on
//! another connection within [`HEALTH_TIMEOUT`]; an agent that panics takes
//! the guest down with it (PID 1), which this sees as QEMU gone or the agent
//! silent. A failure reports the seed, the request number, the method and
//! the request (hex, also saved with the requests before it), and the
//! console log. Everything drawn is determined by the seed (printed;
//! `--seed` replays the same sequence; only the order in which map entries
//! are encoded varies, protobuf's maps being HashMaps).
//!
//! `DestroySandbox` is never sent at random: it powers the guest off by
//! design. It is sent once at the end instead, and the guest must then power
//! off cleanly (QEMU exit status 0), which proves the agent survived the
//! whole run. Teardown must leave no process or state dir behind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use protobuf::reflect::{MessageDescriptor, ReflectValueBox, RuntimeFieldType, RuntimeType};
use protobuf::MessageDyn;
use protocols::health::health_check_response::ServingStatus;
use runtime::agent_client::{AgentAddress, AgentClient};
use runtime::hypervisor::{Accel, Vm};
use serde::Serialize;

use xtask::context::Ctx;

use crate::vmtest::{self, Guest, Media, Traces};

/// Deepest nesting of generated messages (the request itself is depth 0).
pub const MAX_DEPTH: usize = 3;
/// Most elements a generated repeated or map field gets.
pub const MAX_REPEATED: u64 = 4;
/// Generated payloads stay below this (ttrpc refuses frames over 4 MiB
/// client-side, which would test nothing).
const MAX_PAYLOAD: usize = 1 << 20;
/// Bound of one fuzzed call: handlers that wait (WaitProcess, ReadStdout,
/// GetOOMEvent, which blocks until an OOM kill) may legitimately block;
/// such a call counts as `TIMEOUT`, and the next request goes over a fresh
/// connection. The agent also ends a GetOOMEvent at the request's deadline
/// (sent in the envelope) or when its connection closes, so blocked calls
/// do not pile up in the guest.
const FUZZ_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of a request whose message does not decode (see [`FuzzConn::send`]).
const UNDECODABLE_CALL_TIMEOUT: Duration = Duration::from_millis(300);
/// Bound of the `Health.Check` after every request (TCG on a loaded host).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a raw frame's connection is read for an answer.
const FRAME_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Requests kept for a crash report (the crash may show one request late).
const HISTORY: usize = 16;

/// Methods whose legitimate effect ends the session, and why; sent once,
/// last, never at random.
pub const ENDS_SESSION: &[(&str, &str)] = &[(
    "/grpc.AgentService/DestroySandbox",
    "powers the guest off by design; sent once at the end, the guest must then power off cleanly",
)];

#[derive(Args, Clone)]
pub struct FuzzArgs {
    /// How long to send requests.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seed of everything drawn (printed by every run); default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
    /// auto probes KVM with a real boot and falls back to TCG.
    #[arg(long, default_value = "auto")]
    pub accel: Accel,
}

impl Default for FuzzArgs {
    fn default() -> Self {
        FuzzArgs {
            seconds: 60,
            seed: None,
            recipe: "minimal".into(),
            accel: Accel::default(),
        }
    }
}

// ---------------------------------------------------------------------------
// Randomness: SplitMix64, so that a seed means the same sequence everywhere
// (no dependency whose algorithm may change under us).

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// The methods, from the services' own descriptors.

#[derive(Clone)]
pub struct Method {
    /// `grpc.AgentService`
    pub service: String,
    /// `CreateContainer`
    pub name: String,
    pub input: MessageDescriptor,
}

impl Method {
    /// `/grpc.AgentService/CreateContainer`, as on the wire.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.name)
    }
}

/// Every method of every service the agent serves.
pub fn all_methods() -> Vec<Method> {
    let mut out = Vec::new();
    for file in [
        protocols::health::file_descriptor(),
        protocols::agent::file_descriptor(),
    ] {
        for service in file.services() {
            let service_name = format!("{}.{}", file.package(), service.proto().name());
            for method in service.methods() {
                out.push(Method {
                    service: service_name.clone(),
                    name: method.proto().name().to_string(),
                    input: method.input_type(),
                });
            }
        }
    }
    out
}

/// The methods sent at random: all but [`ENDS_SESSION`].
pub fn fuzzed_methods() -> Vec<Method> {
    all_methods()
        .into_iter()
        .filter(|m| !ENDS_SESSION.iter().any(|(p, _)| *p == m.path()))
        .collect()
}

// ---------------------------------------------------------------------------
// Structure-aware generation by reflection.

/// A request message of type `desc`: each field set with probability 1/2,
/// nested messages down to depth `max_depth` (the request is depth 0).
pub fn random_message(
    rng: &mut Rng,
    desc: &MessageDescriptor,
    max_depth: usize,
) -> Box<dyn MessageDyn> {
    fill(rng, desc, 0, max_depth)
}

fn fill(
    rng: &mut Rng,
    desc: &MessageDescriptor,
    depth: usize,
    max_depth: usize,
) -> Box<dyn MessageDyn> {
    let mut msg = desc.new_instance();
    for field in desc.fields() {
        if rng.one_in(2) {
            continue;
        }
        match field.runtime_field_type() {
            RuntimeFieldType::Singular(t) => {
                if let Some(v) = random_value(rng, &t, depth, max_depth) {
                    field.set_singular_field(&mut *msg, v);
                }
            }
            RuntimeFieldType::Repeated(t) => {
                let n = rng.below(MAX_REPEATED + 1);
                let mut repeated = field.mut_repeated(&mut *msg);
                for _ in 0..n {
                    if let Some(v) = random_value(rng, &t, depth, max_depth) {
                        repeated.push(v);
                    }
                }
            }
            RuntimeFieldType::Map(k, v) => {
                let n = rng.below(MAX_REPEATED + 1);
                let mut map = field.mut_map(&mut *msg);
                for _ in 0..n {
                    let key = random_value(rng, &k, depth, max_depth);
                    let value = random_value(rng, &v, depth, max_depth);
                    if let (Some(key), Some(value)) = (key, value) {
                        map.insert(key, value);
                    }
                }
            }
        }
    }
    msg
}

/// A value of type `t` in a message at `depth`; `None` for a message that
/// would nest deeper than `max_depth`.
fn random_value(
    rng: &mut Rng,
    t: &RuntimeType,
    depth: usize,
    max_depth: usize,
) -> Option<ReflectValueBox> {
    Some(match t {
        RuntimeType::I32 => ReflectValueBox::I32(random_int(rng) as i32),
        RuntimeType::I64 => ReflectValueBox::I64(random_int(rng)),
        RuntimeType::U32 => ReflectValueBox::U32(random_int(rng) as u32),
        RuntimeType::U64 => ReflectValueBox::U64(random_int(rng) as u64),
        RuntimeType::F32 => ReflectValueBox::F32(random_float(rng) as f32),
        RuntimeType::F64 => ReflectValueBox::F64(random_float(rng)),
        RuntimeType::Bool => ReflectValueBox::Bool(rng.one_in(2)),
        RuntimeType::String => ReflectValueBox::String(random_string(rng)),
        RuntimeType::VecU8 => ReflectValueBox::Bytes(random_bytes(rng)),
        RuntimeType::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.value()).collect();
            // Mostly declared numbers; sometimes one the agent never heard of.
            let n = if known.is_empty() || rng.one_in(4) {
                random_int(rng) as i32
            } else {
                *rng.pick(&known)
            };
            ReflectValueBox::Enum(e.clone(), n)
        }
        RuntimeType::Message(d) => {
            if depth >= max_depth {
                return None;
            }
            ReflectValueBox::Message(fill(rng, d, depth + 1, max_depth))
        }
    })
}

/// Boundaries, small numbers and anything at all.
fn random_int(rng: &mut Rng) -> i64 {
    const EDGES: &[i64] = &[
        0,
        1,
        -1,
        2,
        9,
        15,
        255,
        4096,
        65535,
        65536,
        i32::MIN as i64,
        i32::MAX as i64,
        u32::MAX as i64,
        i64::MIN,
        i64::MAX,
    ];
    match rng.below(4) {
        0 => *rng.pick(EDGES),
        1 => rng.below(64) as i64,
        2 => -(rng.below(64) as i64),
        _ => rng.next_u64() as i64,
    }
}

fn random_float(rng: &mut Rng) -> f64 {
    const EDGES: &[f64] = &[
        0.0,
        -0.0,
        1.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
    ];
    if rng.one_in(2) {
        *rng.pick(EDGES)
    } else {
        f64::from_bits(rng.next_u64())
    }
}

/// Paths a handler might join, mount, create or open. Nothing here is
/// meant to power the guest off when written to (no sysrq-trigger): the
/// host is trusted with the guest, and a poweroff it asked for is no crash.
const PATHS: &[&str] = &[
    "/",
    "",
    ".",
    "..",
    "../",
    "//",
    "../../../../../../etc/shadow",
    "./a/../../b",
    "/run/kata-containers",
    "/run/kata-containers/../../../",
    "/run/kata-containers/shared/containers/",
    "/dev/null",
    "/dev/zero",
    "/proc/self/fd/0",
    "/proc/1/root",
    "/sys/fs/cgroup",
    "/tmp",
    "/etc/hostname",
    "/etc/resolv.conf",
    "a/b/c",
    "\0",
    "/a\0/b",
];

const SEPARATORS: &[&str] = &["/", "../", "./", "//"];

const SPECIAL: &[&str] = &[
    " ",
    "\n",
    "\r\n",
    "\t",
    "%s%n%x",
    "-1",
    "0",
    "4294967296",
    "18446744073709551616",
    "nameserver 192.0.2.1",
    "nameserver ../../x",
    "tmpfs",
    "bind",
    "ext4",
    "9p",
    "virtio-fs",
    "ro,nosuid,nodev",
    "rbind,rw",
    "size=1T",
    "SIGKILL",
    "*",
    "\u{202e}\u{0}\u{feff}",
    "😀",
];

/// Ids, paths, long strings, special and arbitrary text (valid UTF-8:
/// protobuf refuses to encode anything else; the raw payloads carry
/// invalid UTF-8).
fn random_string(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 | 2 => random_id(rng),
        3 => rng.pick(PATHS).to_string(),
        4 => {
            // a path made of ids, dots and separators
            let mut s = String::new();
            for _ in 0..=rng.below(6) {
                let sep = rng.pick(SEPARATORS);
                s.push_str(sep);
                if rng.one_in(2) {
                    s.push_str(&random_id(rng));
                }
            }
            s
        }
        5 => rng.pick(SPECIAL).to_string(),
        6 => {
            // long: up to 128 KiB, of one character or of a repeated path
            let n = 1 + rng.below(128 * 1024) as usize;
            if rng.one_in(2) {
                "A".repeat(n)
            } else {
                "../".repeat(n / 3 + 1)
            }
        }
        _ => {
            let n = rng.below(64) as usize;
            String::from_utf8_lossy(&rng.bytes(n)).into_owned()
        }
    }
}

/// What the agent accepts as an id ([a-zA-Z0-9][a-zA-Z0-9_.-]*), with
/// occasional characters it must refuse.
fn random_id(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_.-";
    let max = if rng.one_in(8) { 300 } else { 16 };
    let n = 1 + rng.below(max) as usize;
    let mut s: String = (0..n).map(|_| *rng.pick(CHARS) as char).collect();
    if rng.one_in(8) {
        s.push(*rng.pick(&['/', ' ', '\0', '\n', '*', '\\']));
    }
    s
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = if rng.one_in(16) {
        rng.below(64 * 1024)
    } else {
        rng.below(64)
    };
    rng.bytes(n as usize)
}

// ---------------------------------------------------------------------------
// One request.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A message generated for the method's request type.
    Generated,
    /// Malformed bytes for a real or made-up method.
    RawPayload,
    /// A malformed ttrpc frame on a connection of its own.
    RawFrame,
}

#[derive(Debug, Clone)]
pub struct FuzzRequest {
    pub kind: Kind,
    pub service: String,
    pub method: String,
    /// The request message (payload of the ttrpc envelope), or for
    /// [`Kind::RawFrame`] the bytes written to the socket.
    pub bytes: Vec<u8>,
}

impl FuzzRequest {
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// A generated request of `method`, encoded (below [`MAX_PAYLOAD`]).
pub fn generated_request(rng: &mut Rng, method: &Method) -> FuzzRequest {
    let bytes = loop {
        let msg = random_message(rng, &method.input, MAX_DEPTH);
        let bytes = msg
            .write_to_bytes_dyn()
            .expect("a message built by reflection encodes");
        if bytes.len() <= MAX_PAYLOAD {
            break bytes;
        }
    };
    FuzzRequest {
        kind: Kind::Generated,
        service: method.service.clone(),
        method: method.name.clone(),
        bytes,
    }
}

/// Malformed bytes, mostly for a real method (so they reach its decoder),
/// sometimes for a method or service that does not exist.
pub fn raw_payload_request(rng: &mut Rng, methods: &[Method]) -> FuzzRequest {
    let method = rng.pick(methods).clone();
    let (service, name) = if rng.one_in(4) {
        made_up_method(rng, &method)
    } else {
        (method.service.clone(), method.name.clone())
    };
    let bytes = match rng.below(5) {
        0 => {
            let valid = generated_request(rng, &method).bytes;
            let keep = rng.below(valid.len() as u64) as usize;
            valid[..keep].to_vec()
        }
        1 => {
            let mut b = generated_request(rng, &method).bytes;
            for _ in 0..=rng.below(4) {
                if !b.is_empty() {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
            }
            b
        }
        2 => protobuf_bomb(rng),
        _ => {
            let max = if rng.one_in(8) { 65536 } else { 256 };
            let n = rng.below(max) as usize;
            rng.bytes(n)
        }
    };
    FuzzRequest {
        kind: Kind::RawPayload,
        service,
        method: name,
        bytes,
    }
}

fn made_up_method(rng: &mut Rng, real: &Method) -> (String, String) {
    let service = match rng.below(4) {
        0 => String::new(),
        1 => "grpc.Nope".to_string(),
        2 => format!("{}/../grpc.Health", real.service),
        _ => real.service.clone(),
    };
    let method = match rng.below(5) {
        0 => String::new(),
        1 => real.name.to_lowercase(),
        2 => format!("{}\0", real.name),
        3 => "A".repeat(1 + rng.below(4096) as usize),
        _ => random_id(rng),
    };
    // A made-up name must not turn out to be a real method that ends the
    // session.
    if ENDS_SESSION
        .iter()
        .any(|(p, _)| *p == format!("/{service}/{method}"))
    {
        return ("grpc.Nope".into(), method);
    }
    (service, method)
}

/// Hand-made protobuf that stresses decoders: length prefixes far beyond
/// the buffer, deep nesting, groups, overlong varints.
fn protobuf_bomb(rng: &mut Rng) -> Vec<u8> {
    let field = 1 + rng.below(20) as u8;
    match rng.below(5) {
        // field N, length-delimited, length 2^31 - 1, then nothing
        0 => vec![(field << 3) | 2, 0xff, 0xff, 0xff, 0xff, 0x07],
        // a varint of 11 bytes (one too many)
        1 => {
            let mut b = vec![field << 3];
            b.extend(std::iter::repeat_n(0xff, 10));
            b.push(0x01);
            b
        }
        // nested length-delimited field 1, 200 deep (past protobuf's 100)
        2 => {
            let mut b = Vec::new();
            for _ in 0..200 {
                let mut outer = vec![0x0a];
                let mut len = b.len();
                loop {
                    let byte = (len & 0x7f) as u8;
                    len >>= 7;
                    if len == 0 {
                        outer.push(byte);
                        break;
                    }
                    outer.push(byte | 0x80);
                }
                outer.extend(b);
                b = outer;
            }
            b
        }
        // start-group without end-group
        3 => vec![(field << 3) | 3, 0x08, 0x01],
        // wire type 6 and 7 do not exist
        _ => vec![(field << 3) | (6 + rng.below(2) as u8), 0x00],
    }
}

/// ttrpc frame header: length u32 BE, stream id u32 BE, type u8, flags u8.
fn frame(len: u32, stream: u32, kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + body.len());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&stream.to_be_bytes());
    b.push(kind);
    b.push(flags);
    b.extend_from_slice(body);
    b
}

/// The bytes of a malformed ttrpc frame, written on a connection of its
/// own.
pub fn raw_frame_request(rng: &mut Rng, methods: &[Method]) -> FuzzRequest {
    let method = rng.pick(methods).clone();
    let payload = generated_request(rng, &method).bytes;
    let mut envelope = ttrpc::Request::new();
    envelope.service = method.service.clone();
    envelope.method = method.name.clone();
    envelope.payload = payload;
    envelope.timeout_nano = FUZZ_CALL_TIMEOUT.as_nanos() as i64;
    let envelope = protobuf::Message::write_to_bytes(&envelope).expect("encode an envelope");
    let len = envelope.len() as u32;
    let (what, bytes) = match rng.below(8) {
        0 => {
            let claimed = (4 << 20) + 1 + rng.below(u32::MAX as u64 - (4 << 20)) as u32;
            ("oversized", frame(claimed, 1, 1, 0, &envelope))
        }
        1 => {
            let kind = *rng.pick(&[0u8, 3, 4, 0x7f, 0xff]);
            ("unknown-type", frame(len, 1, kind, 0, &envelope))
        }
        2 => (
            "even-stream",
            frame(len, 2 * rng.below(8) as u32, 1, 0, &envelope),
        ),
        3 => {
            let n = rng.below(512) as usize;
            let garbage = rng.bytes(n);
            (
                "garbage-envelope",
                frame(garbage.len() as u32, 1, 1, 0, &garbage),
            )
        }
        4 => {
            let f = frame(len, 1, 1, 0, &envelope);
            let keep = rng.below(10) as usize;
            ("truncated-header", f[..keep].to_vec())
        }
        5 => {
            let f = frame(len, 1, 1, 0, &envelope);
            let keep = 10 + rng.below(u64::from(len).max(1)) as usize;
            ("truncated-body", f[..keep.min(f.len())].to_vec())
        }
        6 => {
            let flags = rng.next_u64() as u8;
            ("flags", frame(len, 1, 1, flags, &envelope))
        }
        _ => {
            // a request as the data frame (type 3) of a stream never opened
            (
                "stray-data",
                frame(len, 1 + 2 * rng.below(8) as u32, 3, 0, &envelope),
            )
        }
    };
    FuzzRequest {
        kind: Kind::RawFrame,
        service: "frame".into(),
        method: what.into(),
        bytes,
    }
}

/// The next request of a run: 80 % generated, 16 % raw payloads, 4 % raw
/// frames.
pub fn next_request(rng: &mut Rng, methods: &[Method]) -> FuzzRequest {
    match rng.below(25) {
        0 => raw_frame_request(rng, methods),
        1..=4 => raw_payload_request(rng, methods),
        _ => {
            let method = rng.pick(methods).clone();
            generated_request(rng, &method)
        }
    }
}

// ---------------------------------------------------------------------------
// The run.

#[derive(Serialize, Clone)]
pub struct Crash {
    pub seed: u64,
    /// 1-based number of the request after which the agent failed.
    pub request_number: u64,
    pub kind: Kind,
    pub method: String,
    /// The request's bytes (message payload, or frame), hex.
    pub request_hex: String,
    /// The last requests, oldest first, one hex line each.
    pub requests_file: String,
    pub error: String,
    pub console_log: String,
    /// The guest console's last lines (a panic shows there).
    pub console_tail: Vec<String>,
}

#[derive(Serialize, Default)]
pub struct FuzzReport {
    pub seed: u64,
    pub seconds: f64,
    pub accel: Option<Accel>,
    /// Requests sent (all kinds).
    pub requests: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Requests per `/service/method` (raw frames as `/frame/<what>`, names
    /// that are no method as [`UNKNOWN_METHOD`]).
    pub per_method: BTreeMap<String, u64>,
    /// Outcomes: `OK`, the ttrpc status code, `TIMEOUT`,
    /// `NO-REPLY-UNDECODABLE` (ttrpc drops a connection whose request does
    /// not decode, unanswered), `TRANSPORT` (connection lost); after these
    /// three the fuzz connection is reopened. Raw frames: `FRAME-ANSWERED`,
    /// `FRAME-CLOSED`, `FRAME-SILENT`.
    pub outcomes: BTreeMap<String, u64>,
    /// The methods of the `TIMEOUT` outcomes (handlers that may block).
    pub timeouts: BTreeMap<String, u64>,
    pub health_checks: u64,
    pub reconnects: u64,
    /// Methods not sent at random, and why.
    pub not_fuzzed: BTreeMap<String, String>,
    pub crashes: u64,
    pub crash: Option<Crash>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    pub qemu_exit: String,
    pub console_log: String,
    pub leftovers: Vec<String>,
}

/// The fuzz connection: a plain ttrpc client, so any service, method and
/// payload can be sent.
struct FuzzConn {
    client: ttrpc::Client,
}

impl FuzzConn {
    fn open(address: &AgentAddress) -> Result<FuzzConn> {
        let fd = address
            .connect(CONNECT_TIMEOUT)
            .with_context(|| format!("connect to the agent at {address}"))?;
        let client = ttrpc::Client::new(fd.into_raw_fd())
            .map_err(|e| anyhow::anyhow!("ttrpc client on {address}: {e}"))?;
        Ok(FuzzConn { client })
    }

    /// Sends one request; the outcome's name and whether the connection
    /// must be reopened.
    fn send(&self, req: &FuzzRequest) -> (String, bool) {
        // ttrpc 0.9's generated handlers answer nothing to a request whose
        // message does not decode: the decode error makes the server abandon
        // the connection (it reads no more from it, and keeps it open). The
        // agent wraps them to answer INVALID_ARGUMENT instead
        // (agent/src/rpc.rs, DecodeErrorReply), so against the agent this
        // outcome means that wrapper no longer applies. Such a request is
        // bounded briefly and counted as NO-REPLY-UNDECODABLE; the next one
        // goes over a fresh connection.
        let undecodable = matches!(
            protocols::requests::decode_request(&req.path(), &req.bytes),
            Err(protocols::requests::DecodeError::Payload { .. })
        );
        let timeout = if undecodable {
            UNDECODABLE_CALL_TIMEOUT
        } else {
            FUZZ_CALL_TIMEOUT
        };
        let mut r = ttrpc::Request::new();
        r.service = req.service.clone();
        r.method = req.method.clone();
        r.payload = req.bytes.clone();
        r.timeout_nano = timeout.as_nanos() as i64;
        match self.client.request(r) {
            Ok(_) => ("OK".into(), false),
            Err(ttrpc::Error::RpcStatus(s)) => (format!("{:?}", s.code()), false),
            // The sync client's own deadline ("... timed out waiting on
            // channel"). A handler still running holds a worker of this
            // connection: move on to a fresh one.
            Err(ttrpc::Error::Others(m)) if m.contains("timed out") => {
                let name = if undecodable {
                    "NO-REPLY-UNDECODABLE"
                } else {
                    "TIMEOUT"
                };
                (name.into(), true)
            }
            Err(_) => ("TRANSPORT".into(), true),
        }
    }
}

/// Where requests for made-up service or method names are counted.
pub const UNKNOWN_METHOD: &str = "(no such method)";

fn method_key(req: &FuzzRequest, declared: &[String]) -> String {
    let path = req.path();
    if req.kind == Kind::RawFrame || declared.contains(&path) {
        path
    } else {
        UNKNOWN_METHOD.to_string()
    }
}

/// Writes a raw frame on a connection of its own and reads what comes back.
fn send_frame(address: &AgentAddress, bytes: &[u8]) -> Result<String> {
    let fd = address
        .connect(CONNECT_TIMEOUT)
        .with_context(|| format!("connect to the agent at {address}"))?;
    // Only read, write and SO_RCVTIMEO are used: fine for any stream socket.
    let mut stream = UnixStream::from(fd);
    stream.set_read_timeout(Some(FRAME_READ_TIMEOUT))?;
    if stream.write_all(bytes).is_err() {
        return Ok("FRAME-CLOSED".into());
    }
    let mut buf = [0u8; 4096];
    Ok(match stream.read(&mut buf) {
        Ok(0) => "FRAME-CLOSED",
        Ok(_) => "FRAME-ANSWERED",
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "FRAME-SILENT"
        }
        Err(_) => "FRAME-CLOSED",
    }
    .into())
}

/// `Health.Check` answers SERVING within [`HEALTH_TIMEOUT`].
fn healthy(client: &AgentClient, alive: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let reply = client.check().context("Health.Check")?;
    if reply.status.enum_value() != Ok(ServingStatus::SERVING) {
        bail!("Health.Check answered {:?}", reply.status);
    }
    alive()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn default_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

pub fn fuzz_vm(ctx: &Ctx, guest: &Guest, args: &FuzzArgs, seed: u64) -> Result<FuzzReport> {
    let cfg = vmtest::config(guest, "fuzz", args.accel, &[]);
    let console = cfg.console_log.clone().expect("config sets a console log");
    let mut vm = Vm::start(cfg).context("start QEMU")?;
    let traces = Traces::of(&vm);
    let mut report = FuzzReport {
        seed,
        console_log: ctx.rel(&console),
        not_fuzzed: ENDS_SESSION
            .iter()
            .map(|(p, why)| (p.to_string(), why.to_string()))
            .collect(),
        ..Default::default()
    };
    let result = drive(ctx, &mut vm, args, seed, &mut report).and_then(|()| {
        let status = vm
            .wait_exit(vmtest::POWEROFF_TIMEOUT)
            .context("after DestroySandbox the guest must power off")?;
        report.qemu_exit = status.to_string();
        Ok(())
    });
    report.accel = Some(vm.accel());
    if let Some(crash) = &mut report.crash {
        // Give a dying guest a moment to print its last words.
        std::thread::sleep(Duration::from_secs(2));
        let text = vm.console_output();
        let lines: Vec<&str> = text.lines().collect();
        crash.console_tail = lines[lines.len().saturating_sub(30)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
    }
    vm.shutdown()?;
    report.leftovers = traces.leftovers();
    match result {
        Ok(()) => Ok(report),
        // A crash is a result, with its report; anything else is an error.
        Err(e) if report.crash.is_some() => {
            report.error = Some(format!("{e:#}"));
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

fn drive(
    ctx: &Ctx,
    vm: &mut Vm,
    args: &FuzzArgs,
    seed: u64,
    report: &mut FuzzReport,
) -> Result<()> {
    let address = vm.agent_address().context("the VM has no agent channel")?;
    let health =
        AgentClient::wait_serving(&address, vmtest::SERVING_TIMEOUT, HEALTH_TIMEOUT, || {
            vm.check_alive()
        })
        .with_context(|| format!("agent in the fuzz guest (console: {})", report.console_log))?;
    let logs = ctx.logs();
    let mut alive = || vm.check_alive().context("QEMU");
    let target = Target {
        address: &address,
        health: &health,
        alive: &mut alive,
        logs: &logs,
        progress: &|line: &str| ctx.ui.info(line),
    };
    fuzz_loop(target, Duration::from_secs(args.seconds), seed, report)?;
    // The end: the agent powers the guest off on DestroySandbox.
    health
        .destroy_sandbox()
        .context("DestroySandbox after fuzzing")?;
    *report
        .per_method
        .entry(ENDS_SESSION[0].0.to_string())
        .or_default() += 1;
    Ok(())
}

/// What [`fuzz_loop`] sends to and watches.
pub struct Target<'a> {
    pub address: &'a AgentAddress,
    /// A connection of its own for `Health.Check`.
    pub health: &'a AgentClient,
    /// Fails once the agent's host (QEMU) is gone.
    pub alive: &'a mut dyn FnMut() -> Result<()>,
    /// Where a crash's last requests are saved.
    pub logs: &'a std::path::Path,
    pub progress: &'a dyn Fn(&str),
}

/// Sends requests for `budget`, checking health after each one. A failed
/// check fills `report.crash` and returns the error.
pub fn fuzz_loop(
    target: Target,
    budget: Duration,
    seed: u64,
    report: &mut FuzzReport,
) -> Result<()> {
    let Target {
        address,
        health,
        alive,
        logs,
        progress,
    } = target;
    let methods = fuzzed_methods();
    let declared: Vec<String> = all_methods().iter().map(Method::path).collect();
    let mut rng = Rng::new(seed);
    let mut conn = Some(FuzzConn::open(address)?);
    let mut history: std::collections::VecDeque<FuzzRequest> = Default::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while started.elapsed() < budget {
        let req = next_request(&mut rng, &methods);
        report.requests += 1;
        *report
            .by_kind
            .entry(
                serde_json::to_value(req.kind)?
                    .as_str()
                    .unwrap_or("")
                    .into(),
            )
            .or_default() += 1;
        let key = method_key(&req, &declared);
        *report.per_method.entry(key.clone()).or_default() += 1;
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(req.clone());
        let outcome = if req.kind == Kind::RawFrame {
            send_frame(address, &req.bytes).unwrap_or_else(|_| "FRAME-CONNECT-FAILED".into())
        } else {
            if conn.is_none() {
                conn = FuzzConn::open(address).ok();
            }
            let (outcome, reopen) = match &conn {
                Some(c) => c.send(&req),
                None => ("CONNECT-FAILED".into(), true),
            };
            if reopen {
                // A fresh connection for the next request; whether the
                // agent still lives is the health check's to say.
                report.reconnects += 1;
                conn = FuzzConn::open(address).ok();
            }
            outcome
        };
        if outcome == "TIMEOUT" {
            *report.timeouts.entry(key).or_default() += 1;
        }
        *report.outcomes.entry(outcome).or_default() += 1;
        report.health_checks += 1;
        if let Err(e) = healthy(health, alive) {
            report.seconds = started.elapsed().as_secs_f64();
            report.crashes = 1;
            report.crash = Some(crash_report(logs, seed, report, &req, &history, &e)?);
            bail!(
                "the agent failed after request {} ({:?} {})",
                report.requests,
                req.kind,
                req.path(),
            );
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            progress(&format!(
                "test fuzz: {} requests in {:.0} s",
                report.requests,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(())
}

fn crash_report(
    logs: &std::path::Path,
    seed: u64,
    report: &FuzzReport,
    req: &FuzzRequest,
    history: &std::collections::VecDeque<FuzzRequest>,
    error: &anyhow::Error,
) -> Result<Crash> {
    let file = logs.join(format!("fuzz-crash-{seed}-{}.txt", report.requests));
    let first = report.requests + 1 - history.len() as u64;
    let mut text = String::new();
    for (i, r) in history.iter().enumerate() {
        let _ = writeln!(
            text,
            "#{} {:?} {} {}",
            first + i as u64,
            r.kind,
            r.path(),
            hex(&r.bytes)
        );
    }
    std::fs::create_dir_all(logs)?;
    std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
    Ok(Crash {
        seed,
        request_number: report.requests,
        kind: req.kind,
        method: req.path(),
        request_hex: hex(&req.bytes),
        requests_file: file.display().to_string(),
        error: format!("{error:#}"),
        console_log: report.console_log.clone(),
        console_tail: Vec::new(),
    })
}

pub fn run(ctx: &Ctx, args: &FuzzArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(default_seed);
    ctx.ui.info(&format!(
        "test fuzz: seed {seed} ({} s; replay with --seed {seed})",
        args.seconds
    ));
    let guest = vmtest::prepare(ctx, Media::Initrd, &args.recipe)?;
    let report = fuzz_vm(ctx, &guest, args, seed)?;
    for (method, n) in &report.per_method {
        ctx.ui.info(&format!("test fuzz: {n:>7} {method}"));
    }
    let outcomes: Vec<String> = report
        .outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    ctx.ui.info(&format!(
        "test fuzz: {} requests in {:.1} s (seed {seed}), outcomes: {}; {} crashes; QEMU {}",
        report.requests,
        report.seconds,
        outcomes.join(", "),
        report.crashes,
        report.qemu_exit
    ));
    if !report.timeouts.is_empty() {
        ctx.ui.info(&format!(
            "test fuzz: TIMEOUT (no answer within {FUZZ_CALL_TIMEOUT:?}) by method: {:?}",
            report.timeouts
        ));
    }
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report)?)?;
    }
    if let Some(c) = &report.crash {
        bail!(
            "CRASH: {}; seed {}, request #{} ({:?} {}), request hex {}{}; last requests in {}; console: {}; its last lines:\n{}",
            report.error.as_deref().unwrap_or("the agent failed"),
            c.seed,
            c.request_number,
            c.kind,
            c.method,
            &c.request_hex[..c.request_hex.len().min(1024)],
            if c.request_hex.len() > 1024 { "..." } else { "" },
            c.requests_file,
            c.console_log,
            c.console_tail.join("\n")
        );
    }
    if !report.leftovers.is_empty() {
        bail!("after the fuzz VM: {}", report.leftovers.join("; "));
    }
    if !report.qemu_exit.contains("exit status: 0") {
        bail!(
            "QEMU ended with {} after DestroySandbox (console: {})",
            report.qemu_exit,
            report.console_log
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::reflect::{ReflectFieldRef, ReflectValueRef};
    use protobuf::MessageFull;

    /// Nesting depth of a message (0: no message-typed field set).
    fn depth(msg: &dyn MessageDyn) -> usize {
        let mut deepest = 0;
        let mut visit = |v: ReflectValueRef| {
            if let ReflectValueRef::Message(m) = v {
                deepest = deepest.max(1 + depth(&*m));
            }
        };
        for field in msg.descriptor_dyn().fields() {
            match field.get_reflect(msg) {
                ReflectFieldRef::Optional(o) => {
                    if let Some(v) = o.value() {
                        visit(v);
                    }
                }
                ReflectFieldRef::Repeated(r) => {
                    for i in 0..r.len() {
                        visit(r.get(i));
                    }
                }
                ReflectFieldRef::Map(m) => {
                    for (_, v) in &m {
                        visit(v);
                    }
                }
            }
        }
        deepest
    }

    #[test]
    fn every_declared_method_is_known_and_only_destroy_sandbox_is_held_back() {
        let all: Vec<String> = all_methods().iter().map(Method::path).collect();
        let mut expected: Vec<String> = protocols::requests::REQUEST_PATHS
            .iter()
            .map(|p| p.to_string())
            .collect();
        let mut got = all.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        let fuzzed: Vec<String> = fuzzed_methods().iter().map(Method::path).collect();
        assert_eq!(fuzzed.len(), all.len() - 1);
        assert!(!fuzzed.contains(&"/grpc.AgentService/DestroySandbox".to_string()));
    }

    /// The same seed draws the same requests. Bytes may differ in the order
    /// of map entries only (protobuf's maps are HashMaps), so generated
    /// requests are compared decoded, the others by method and size.
    #[test]
    fn the_same_seed_gives_the_same_requests() {
        let methods = fuzzed_methods();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..300)
                .map(|_| next_request(&mut rng, &methods))
                .collect::<Vec<_>>()
        };
        let same = |a: &FuzzRequest, b: &FuzzRequest| {
            if (a.kind, a.path(), a.bytes.len()) != (b.kind, b.path(), b.bytes.len()) {
                return false;
            }
            if a.kind != Kind::Generated {
                return true;
            }
            let x = protocols::requests::decode_request(&a.path(), &a.bytes).unwrap();
            let y = protocols::requests::decode_request(&b.path(), &b.bytes).unwrap();
            x.descriptor_dyn().eq(&*x, &*y)
        };
        let (a, b, c) = (run(42), run(42), run(43));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                same(x, y),
                "request {i} differs: {} / {}",
                x.path(),
                y.path()
            );
        }
        assert!(a.iter().zip(&c).any(|(x, y)| !same(x, y)));
    }

    #[test]
    fn generated_requests_decode_as_their_type_for_every_method() {
        let mut rng = Rng::new(7);
        for method in all_methods() {
            let mut non_empty = 0;
            for _ in 0..100 {
                let req = generated_request(&mut rng, &method);
                assert!(req.bytes.len() <= MAX_PAYLOAD);
                let decoded = protocols::requests::decode_request(&req.path(), &req.bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", req.path()));
                assert_eq!(decoded.descriptor_dyn(), method.input);
                // encoding is deterministic for a decoded message too
                let again = decoded.write_to_bytes_dyn().unwrap();
                let redecoded = protocols::requests::decode_request(&req.path(), &again).unwrap();
                assert!(method.input.eq(&*decoded, &*redecoded), "{}", req.path());
                if !req.bytes.is_empty() {
                    non_empty += 1;
                }
            }
            if method.input.fields().next().is_some() {
                assert!(non_empty > 0, "{}: never any field set", method.path());
            }
        }
    }

    #[test]
    fn nesting_respects_the_depth_bound_and_reaches_it() {
        let desc = protocols::agent::CreateContainerRequest::descriptor();
        for max in 0..=MAX_DEPTH {
            let mut rng = Rng::new(max as u64);
            let mut deepest = 0;
            for _ in 0..200 {
                let msg = random_message(&mut rng, &desc, max);
                let d = depth(&*msg);
                assert!(d <= max, "depth {d} > bound {max}");
                deepest = deepest.max(d);
            }
            assert_eq!(deepest, max, "bound {max} never reached");
        }
    }

    #[test]
    fn repeated_fields_stay_small() {
        let desc = protocols::agent::CreateContainerRequest::descriptor();
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let msg = random_message(&mut rng, &desc, MAX_DEPTH);
            for field in desc.fields() {
                if let ReflectFieldRef::Repeated(r) = field.get_reflect(&*msg) {
                    assert!(r.len() as u64 <= MAX_REPEATED);
                }
            }
        }
    }

    #[test]
    fn raw_requests_are_malformed_or_elsewhere_and_never_end_the_session() {
        let methods = fuzzed_methods();
        let mut rng = Rng::new(11);
        let mut kinds = BTreeMap::new();
        for _ in 0..2000 {
            let r = next_request(&mut rng, &methods);
            *kinds.entry(format!("{:?}", r.kind)).or_insert(0) += 1;
            assert!(
                !ENDS_SESSION.iter().any(|(p, _)| *p == r.path()),
                "{} sent at random",
                r.path()
            );
            if r.kind == Kind::RawFrame {
                assert!(r.bytes.len() < 10 + MAX_PAYLOAD + 4096);
            }
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
    }

    /// A stand-in agent on a unix socket: every AgentService method answers
    /// NOT_FOUND (the generated defaults); with `break_on_date` the first
    /// SetGuestDateTime that decodes makes Health.Check say NOT_SERVING.
    struct Stub {
        broken: std::sync::atomic::AtomicBool,
        break_on_date: bool,
    }

    impl protocols::health_ttrpc::Health for Stub {
        fn check(
            &self,
            _: &ttrpc::TtrpcContext,
            _: protocols::health::CheckRequest,
        ) -> ttrpc::Result<protocols::health::HealthCheckResponse> {
            let mut r = protocols::health::HealthCheckResponse::new();
            r.status = if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                ServingStatus::NOT_SERVING
            } else {
                ServingStatus::SERVING
            }
            .into();
            Ok(r)
        }
    }

    impl protocols::agent_ttrpc::AgentService for Stub {
        fn set_guest_date_time(
            &self,
            _: &ttrpc::TtrpcContext,
            _: protocols::agent::SetGuestDateTimeRequest,
        ) -> ttrpc::Result<protocols::empty::Empty> {
            if self.break_on_date {
                self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(protocols::empty::Empty::new())
        }
    }

    fn stub_agent(dir: &std::path::Path, break_on_date: bool) -> (ttrpc::Server, AgentAddress) {
        let sock = dir.join("agent.sock");
        let stub = std::sync::Arc::new(Stub {
            broken: false.into(),
            break_on_date,
        });
        let mut methods = protocols::agent_ttrpc::create_agent_service(stub.clone());
        methods.extend(protocols::health_ttrpc::create_health(stub));
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(methods);
        server.start().unwrap();
        (server, AgentAddress::Unix(sock))
    }

    fn run_loop(
        address: &AgentAddress,
        logs: &std::path::Path,
        seconds: u64,
        seed: u64,
    ) -> (Result<()>, FuzzReport) {
        let health = AgentClient::connect(address, CONNECT_TIMEOUT, HEALTH_TIMEOUT).unwrap();
        let mut alive = || Ok(());
        let mut report = FuzzReport::default();
        let target = Target {
            address,
            health: &health,
            alive: &mut alive,
            logs,
            progress: &|_: &str| {},
        };
        let r = fuzz_loop(target, Duration::from_secs(seconds), seed, &mut report);
        (r, report)
    }

    #[test]
    fn the_loop_sends_every_kind_and_counts_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let (server, address) = stub_agent(dir.path(), false);
        let (r, report) = run_loop(&address, dir.path(), 3, 1);
        server.shutdown();
        r.unwrap();
        assert!(report.crash.is_none());
        assert!(
            report.requests > 20,
            "{} requests: {:?}",
            report.requests,
            report.outcomes
        );
        assert_eq!(report.health_checks, report.requests);
        assert!(
            report.by_kind.contains_key("generated"),
            "{:?}",
            report.by_kind
        );
        assert!(
            report.by_kind.contains_key("raw-payload"),
            "{:?}",
            report.by_kind
        );
        // the stub's defaults, and malformed payloads refused before them
        assert!(
            report.outcomes.contains_key("NOT_FOUND"),
            "{:?}",
            report.outcomes
        );
        assert_eq!(
            report.outcomes.values().sum::<u64>(),
            report.requests,
            "{:?}",
            report.outcomes
        );
    }

    #[test]
    fn a_health_failure_is_a_crash_naming_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let (server, address) = stub_agent(dir.path(), true);
        let (r, report) = run_loop(&address, dir.path(), 60, 5);
        server.shutdown();
        let err = r.unwrap_err();
        let crash = report.crash.as_ref().expect("a crash report");
        assert_eq!(report.crashes, 1);
        assert_eq!(
            crash.method, "/grpc.AgentService/SetGuestDateTime",
            "{err:#}"
        );
        assert_eq!(crash.request_number, report.requests);
        assert_eq!(crash.seed, 5);
        assert!(crash.error.contains("NOT_SERVING"), "{}", crash.error);
        let saved = std::fs::read_to_string(&crash.requests_file).unwrap();
        let last = saved.lines().last().unwrap();
        assert!(
            last.starts_with(&format!("#{} ", crash.request_number))
                && last.ends_with(&crash.request_hex),
            "{last}"
        );
    }
}
