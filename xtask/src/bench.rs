//! `cargo xtask bench NAME`: speed and size figures, reported as medians.
//! Timings live here and never in tests.

use anyhow::Result;
use clap::ValueEnum;

use crate::context::Ctx;

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum BenchName {
    /// Warm no-op `image` run; cold initrd+image with the agent cached; sizes.
    Build,
}

pub fn run(ctx: &Ctx, name: BenchName) -> Result<()> {
    match name {
        BenchName::Build => crate::bench_build::run(ctx),
    }
}
