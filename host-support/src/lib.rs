//! Host-side helpers shared by the build pipeline (xtask, rootfs-builder,
//! kernel-builder), the release packaging, the runtime and the test harness:
//! one GNU tar writer, atomic file writes, tree walks, log tails, bounded
//! waits with TERM→KILL escalation, sha256 of files and UTC dates.
//!
//! Each helper exists once, here, so that its behaviour (the bytes of a tar
//! stream, the mode an atomic write leaves, how long a stop may take) cannot
//! drift between crates. Where a well-kept crate does the job it is used
//! (`time`, `walkdir`, `which`); what is here is what those do not cover.
//!
//! Never linked into the guest agent: the agent is one static musl binary in
//! every guest image, where size matters, so it keeps its own few lines.

pub mod date;
pub mod fs;
pub mod hash;
pub mod log;
pub mod process;
pub mod program;
pub mod tar;
