//! The `xtask` library: the build and release pipeline of this project,
//! behind the `cargo xtask` binary (main.rs) and used by the test harness
//! (the `xtask-test` crate), which runs the same pipeline steps before it
//! tests their results.
//!
//! Data flows one way: `versions.yaml` + recipe -> step graph (graph.rs:
//! each step's labelled inputs, hence its cache key, and its dependencies)
//! -> the one executor runs what is not cached -> artifacts published to
//! `target/dist/` and recorded in `manifest.json`. One module per task adds
//! its step; `cache.rs` alone knows the cache's layout; `host_tools.rs` is
//! the one list of host tools (steps and `doctor` read it); external tools
//! are only ever invoked through `tools.rs`. `--dry-run [--json]` prints the
//! graph a command would run, and runs nothing.
//!
//! Only what the binary or the harness use is public. The pipeline never
//! depends on the runtime's crates (`kata-runtime`, `protocols`, ttrpc): it
//! builds them with cargo, as files, and the harness is what links them.

pub mod agent;
pub mod cache;
pub mod context;
pub mod doctor;
mod elf;
pub mod error;
mod fetch;
pub mod graph;
pub mod hash;
pub mod host_tools;
pub mod image;
pub mod initrd;
pub mod kernel;
pub mod manifest;
mod publish;
pub mod release;
pub mod rootfs;
mod runtime_bins;
pub mod tools;
mod ui;
mod versions;
pub mod versions_cmd;

use std::path::PathBuf;

use clap::Args;

/// Set by the `xtask` binary when it hands `test` or `bench` to the
/// harness: the path of the pipeline binary itself, which the benchmarks
/// run as a child.
pub const PIPELINE_EXE_ENV: &str = "KATA_XTASK_EXE";

/// The checkout a pipeline binary works on, when not the one it was built
/// from: `test repro` runs this checkout's binary in a clean copy of the
/// same sources (the build tool is an input both builds share, like rustc;
/// every artifact is still built from empty in the copy).
pub const ROOT_ENV: &str = "KATA_XTASK_ROOT";

/// The global options of every `cargo xtask` command, the pipeline's and
/// the harness's alike (design.md section 1).
#[derive(Args, Clone)]
pub struct GlobalOpts {
    /// The pin file.
    #[arg(long, global = true, value_name = "FILE")]
    versions: Option<PathBuf>,
    /// Where step results and verified downloads are kept [env: KATA_XTASK_CACHE_DIR] [default: target/cache]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Where artifacts and manifest.json go [env: KATA_XTASK_DIST_DIR] [default: target/dist]
    #[arg(long, global = true, value_name = "DIR")]
    dist_dir: Option<PathBuf>,
    /// Use only cached inputs; never download.
    #[arg(long, global = true)]
    offline: bool,
    /// Say why each step ran and show tool output.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print the plan (steps, cache keys, hit or miss) and run nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Print exactly one JSON object on stdout (human output stays on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Put this static kata-agent in the guests instead of building one
    /// (upstream osbuilder's AGENT_SOURCE_BIN): a `cargo xtask agent` of
    /// this checkout, e.g. from another job or for a build without a Rust
    /// toolchain. Its sha256 is recorded in osbuilder.yaml.
    #[arg(long, global = true, value_name = "FILE")]
    agent_bin: Option<PathBuf>,
}

impl GlobalOpts {
    /// `-v` was given.
    pub fn verbose(&self) -> bool {
        self.verbose
    }
}
