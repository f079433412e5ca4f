//! `containerd-shim-kata-v2`: containerd's shim v2 for Kata Containers
//! (`ctr run --runtime io.containerd.kata.v2 ...`). All logic is in
//! `runtime::shim`; containerd-shim's `run` handles the binary protocol
//! (`start`, `delete`, serving the task API).

fn main() {
    // The settings go in here, not in `Shim::new`: the crate reads the
    // reaper settings before calling `new` (see `shim_config`).
    containerd_shim::run::<runtime::shim::KataShim>(
        runtime::shim::RUNTIME_ID,
        Some(runtime::shim::shim_config()),
    )
}
