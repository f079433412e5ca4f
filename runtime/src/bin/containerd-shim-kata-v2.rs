//! `containerd-shim-kata-v2`: containerd's shim v2 for Kata Containers
//! (`ctr run --runtime io.containerd.kata.v2 ...`). All logic is in
//! `runtime::shim`; containerd-shim's `run` handles the binary protocol
//! (`start`, `delete`, serving the task API).

fn main() {
    containerd_shim::run::<runtime::shim::KataShim>(runtime::shim::RUNTIME_ID, None)
}
