//! `cargo xtask`: the build, release and test pipeline of this project.
//!
//! The pipeline itself is the `xtask` library (lib.rs); this binary parses
//! the command line (design.md section 1) and runs it. `test` and `bench`
//! belong to the harness, the `xtask-test` crate, which links the runtime's
//! crates the pipeline never needs: they are passed through unparsed, as
//! `cargo run --package xtask-test -- <this binary's argv>`, so the command
//! line, the global options (before or after the subcommand), `--json` and
//! the exit status are the same for every command.
//!
//! Exit status: 0 success, 1 the work failed, 2 bad usage or bad input.

use std::ffi::OsString;
use std::process::{Command as Process, ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use xtask::context::{project_root, Ctx};
use xtask::{
    agent, doctor, error, image, initrd, kernel, release, rootfs, versions_cmd, GlobalOpts,
    PIPELINE_EXE_ENV,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, release and test the Kata guest and runtime from pinned sources"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Pipeline(Pipeline),
    /// The tests: lint, unit (cargo test), kernel, vm (boot and talk to the agent), e2e, repro, all.
    #[command(disable_help_flag = true)]
    Test(HarnessArgs),
    /// Benchmarks: build, kernel, boot, start, release.
    #[command(disable_help_flag = true)]
    Bench(HarnessArgs),
}

/// The commands this binary runs itself.
#[derive(Subcommand)]
enum Pipeline {
    /// Check host tools, targets and helpers; print the command fixing each gap.
    Doctor {
        /// Run those commands (apt-get, rustup, cargo install).
        #[arg(long)]
        install: bool,
    },
    /// Validate versions.yaml and print the resolved pins.
    Versions {
        /// Re-pin an entry to what its source serves now (kernel, busybox, vhost_device_vsock).
        #[arg(long, value_name = "NAME")]
        update: Option<String>,
        /// With --update: which source of the entry to re-pin.
        #[arg(long, value_enum, default_value = "debian", requires = "update")]
        source: versions_cmd::Source,
    },
    /// The guest kernel from pinned source and kernel-configs/ fragments.
    Kernel(kernel::KernelArgs),
    /// The static musl kata-agent.
    Agent,
    /// A rootfs tree from image-recipes/NAME.yaml.
    Rootfs {
        #[arg(long, default_value = "minimal")]
        recipe: String,
        /// Add the module flavour kernel's modules (`kernel --modules`)
        /// under /lib/modules.
        #[arg(long)]
        kernel_modules: bool,
    },
    /// An initrd (cpio newc, compressed) from that rootfs.
    Initrd(initrd::InitrdArgs),
    /// A rootfs disk image (DAX header by default).
    Image(image::ImageArgs),
    /// Everything, plus the static tarball, .deb, .rpm, SHA256SUMS and SBOM.
    Release(release::ReleaseArgs),
}

/// `test` and `bench` run in the harness (the xtask-test crate), which
/// parses their arguments.
#[derive(Args)]
struct HarnessArgs {
    /// What to run and its options (`cargo xtask test --help`, `cargo xtask bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let done = match cli.command {
        Command::Pipeline(command) => run(&cli.global, command).map(|()| 0),
        Command::Test(_) | Command::Bench(_) => harness(),
    };
    match done {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(error::exit_code(&e) as u8)
        }
    }
}

/// `test` and `bench`: `cargo run --package xtask-test -- <argv>` with this
/// binary's own arguments, unchanged (the global options may come before or
/// after the subcommand), from the repository root; its exit status is ours
/// (anything but 0, 1 or 2, such as cargo failing to build the harness or a
/// signal, is 1: the work failed). Cargo's own output goes to stderr, so
/// with `--json` stdout is still the harness's one JSON object; it is not
/// `--quiet`, for the same reason as the `cargo xtask` alias: the first run
/// compiles the runtime for minutes, and cargo's progress shows it working.
fn harness() -> Result<u8> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = xtask::tools::run_status(
        Process::new(&cargo)
            .args(["run", "--package", "xtask-test", "--"])
            .args(std::env::args_os().skip(1))
            .env(PIPELINE_EXE_ENV, std::env::current_exe()?)
            .current_dir(project_root()),
    )
    .with_context(|| format!("run {} run --package xtask-test", cargo.to_string_lossy()))?;
    Ok(match status.code() {
        Some(code @ 0..=2) => code as u8,
        _ => 1,
    })
}

fn run(global: &GlobalOpts, command: Pipeline) -> Result<()> {
    let ctx = Ctx::new(global)?;
    match command {
        Pipeline::Doctor { install } => doctor_cmd(&ctx, install),
        Pipeline::Versions { update, source } => versions_cmd::run(&ctx, update.as_deref(), source),
        Pipeline::Kernel(args) => kernel::run(&ctx, &args),
        Pipeline::Agent => agent::run(&ctx),
        Pipeline::Rootfs {
            recipe,
            kernel_modules,
        } => rootfs::run(
            &ctx,
            &rootfs::GuestTree {
                recipe: &recipe,
                kernel_modules,
            },
        ),
        Pipeline::Initrd(args) => initrd::run(&ctx, &args),
        Pipeline::Image(args) => image::run(&ctx, &args),
        Pipeline::Release(args) => release::run(&ctx, &args),
    }
}

fn doctor_cmd(ctx: &Ctx, install: bool) -> Result<()> {
    if install && !ctx.dry_run {
        doctor::install(&ctx.versions, &ctx.ui)?;
    }
    let gaps = doctor::gaps(&ctx.versions);
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "ok": gaps.is_empty(), "gaps": gaps }))?;
    }
    if gaps.is_empty() {
        ctx.ui
            .info("doctor: this host has everything the pipeline needs");
        return Ok(());
    }
    for g in &gaps {
        ctx.ui.info(&format!(
            "missing: {} ({}), for {}\n    fix: {}",
            g.what, g.problem, g.needed_for, g.fix
        ));
    }
    if install && ctx.dry_run {
        ctx.ui.info("--dry-run: nothing installed");
    }
    anyhow::bail!(
        "{} host requirement(s) missing; `cargo xtask doctor --install` installs them",
        gaps.len()
    )
}
