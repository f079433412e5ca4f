//! `cargo xtask bench NAME`: speed and size figures, reported as medians
//! (and ratios measured in the same run). Timings live here and never in
//! tests.

use anyhow::Result;
use clap::ValueEnum;

use xtask::context::Ctx;

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum BenchName {
    /// Warm no-op `image` run; cold initrd+image with the agent cached; sizes.
    Build,
    /// Cold kernel build time, kernel sizes, time to init against Debian's cloud kernel.
    Kernel,
    /// QEMU start to agent SERVING over 10 boots, initrd and DAX image; agent size.
    Boot,
    /// `ctr run --rm true`, kata against runc (alternated); idle sandbox PSS.
    Start,
    /// Cold release in a clean clone with and without a cached kernel, warm no-op; sizes.
    Release,
}

pub fn run(ctx: &Ctx, name: BenchName) -> Result<()> {
    match name {
        BenchName::Build => crate::bench_build::run(ctx),
        BenchName::Kernel => crate::bench_vm::kernel(ctx),
        BenchName::Boot => crate::bench_vm::boot(ctx),
        BenchName::Start => crate::bench_start::run(ctx),
        BenchName::Release => crate::bench_release::run(ctx),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
