//! `xtask-test`: the test and benchmark harness of this project, behind
//! `cargo xtask test ...` and `cargo xtask bench ...`.
//!
//! It lives apart from the build tool (`xtask`) because it drives the built
//! artifacts through the runtime's own code (`runtime`, `protocols`, ttrpc),
//! which the pipeline itself never needs: `cargo xtask doctor` or `release`
//! do not compile any of it. The `xtask` binary passes `test` and `bench`
//! through to this one (`cargo run --package xtask-test -- <its argv>`), so
//! the command line stays the one design.md section 1 documents; this binary
//! parses the same global options with the `xtask` library's
//! [`xtask::GlobalOpts`] and builds the same [`xtask::context::Ctx`].
//!
//! Modules: `test_cmd.rs` (`test [lint|unit|kernel|vm|fuzz|e2e|cri|soak|repro|all]`),
//! `vmtest.rs`, `fuzz.rs`, `kernel_boot.rs`, `e2e/`, `cri/`, `repro.rs`; `bench.rs` and
//! `bench_*.rs` (`bench NAME`).
//!
//! Exit status: 0 success, 1 the work failed, 2 bad usage or bad input.

mod bench;
mod bench_build;
mod bench_release;
mod bench_start;
mod bench_vm;
mod boot_phases;
mod cri;
mod e2e;
mod fuzz;
mod kernel_boot;
mod repro;
mod rootless;
mod soak;
mod test_cmd;
mod vmtest;

use std::path::PathBuf;
use std::process::{Command as Process, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use xtask::context::Ctx;
use xtask::GlobalOpts;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "xtask",
    about = "Test and benchmark the Kata guest and runtime built by the pipeline"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The tests: lint, unit (cargo test), kernel, vm (boot and talk to the agent), fuzz (the agent in a VM), e2e, cri, soak, repro, all.
    Test(test_cmd::TestArgs),
    /// Benchmarks: build, kernel, boot, start, release.
    Bench {
        #[arg(value_enum)]
        name: bench::BenchName,
    },
}

fn main() -> ExitCode {
    // `test cri`'s fixture CNI plugin is this binary under another name.
    if cri::fixture::invoked_as_fixture() {
        return cri::fixture::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(xtask::error::exit_code(&e) as u8)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Test(args) => test_cmd::run(&ctx, &args),
        Command::Bench { name } => bench::run(&ctx, name),
    }
}

/// The pipeline's own binary (`xtask`), which the benchmarks time as a
/// child: the one that dispatched to this harness (it says so in
/// [`xtask::PIPELINE_EXE_ENV`]), else the one cargo builds now.
pub fn pipeline_exe(ctx: &Ctx) -> Result<PathBuf> {
    if let Some(exe) = std::env::var_os(xtask::PIPELINE_EXE_ENV).filter(|e| !e.is_empty()) {
        return Ok(PathBuf::from(exe));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Process::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "xtask",
            "--bin",
            "xtask",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&ctx.root)
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build --package xtask")?;
    if !out.status.success() {
        bail!("cargo build --package xtask failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "xtask" {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo build --package xtask named no xtask executable")
}
