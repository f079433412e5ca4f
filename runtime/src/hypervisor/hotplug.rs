//! Block devices hot-plugged into a running VM: a PCI bridge on the q35
//! root bus, present from boot, whose slots take virtio-blk devices added
//! over QMP (`blockdev-add` + `device_add`) and removed again
//! (`device_del`, the guest's eject, `blockdev-del`).
//!
//! The root bus of q35 (PCI Express) cannot take hot-plugged devices; the
//! bridge can, through ACPI, which the guest kernel handles
//! (`CONFIG_HOTPLUG_PCI_ACPI`). Its id, slot and the PCI path of a device
//! behind it are upstream Kata's, so the agent finds the disk the same way
//! (`"02/<slot>"`, storage driver `blk`).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

/// The bridge's QEMU id.
pub const BRIDGE_ID: &str = "pci-bridge-0";
/// Its slot on the root bus (`pcie.0`).
pub const BRIDGE_SLOT: u8 = 2;
/// Slots a bridge has (5 bits of device number); slot 0 is left empty.
const FIRST_SLOT: u8 = 1;
const LAST_SLOT: u8 = 31;

/// The `-device` argument of the bridge. `shpc=off`: hotplug goes through
/// ACPI, which q35 provides for bridges; the guest needs no SHPC driver.
/// The reservations make the firmware open I/O and memory windows on the
/// bridge while it is still empty: without them a device plugged later
/// gets no BARs ("can't assign; no space") and its driver gives up. They
/// hold all 31 slots' virtio-blk BARs (128 B I/O, 4 KiB and 16 KiB memory).
pub fn bridge_device_arg() -> String {
    format!(
        "pci-bridge,bus=pcie.0,id={BRIDGE_ID},chassis_nr=1,shpc=off,addr={BRIDGE_SLOT:#x},\
         io-reserve=4k,mem-reserve=1m,pref64-reserve=1m"
    )
}

/// Upstream's PCI path of a device in `slot` behind the bridge: each hop's
/// slot in two hex digits, from the root bus down.
pub fn pci_path(slot: u8) -> String {
    format!("{BRIDGE_SLOT:02x}/{slot:02x}")
}

/// Which bridge slots hold a device.
#[derive(Debug, Default)]
pub struct BridgeSlots {
    used: BTreeSet<u8>,
}

impl BridgeSlots {
    /// The lowest free slot, now taken; `None` when the bridge is full.
    pub fn take(&mut self) -> Option<u8> {
        let slot = (FIRST_SLOT..=LAST_SLOT).find(|s| !self.used.contains(s))?;
        self.used.insert(slot);
        Some(slot)
    }

    pub fn free(&mut self, slot: u8) {
        self.used.remove(&slot);
    }
}

/// A block device plugged into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluggedBlock {
    /// The QEMU device id (`device_del` takes it).
    pub device_id: String,
    /// The block node (`blockdev-del`, `block_resize` take it).
    pub node_name: String,
    pub slot: u8,
    /// What the agent resolves (`Storage.source` of driver `blk`).
    pub pci_path: String,
}

impl PluggedBlock {
    pub fn new(name: &str, slot: u8) -> PluggedBlock {
        PluggedBlock {
            device_id: format!("virtio-{name}"),
            node_name: format!("drive-{name}"),
            slot,
            pci_path: pci_path(slot),
        }
    }
}

/// `blockdev-add` arguments: a raw node over the host file or block device.
/// `host_device` for block devices: QEMU then reads their size from the
/// device and refuses a regular file, and the reverse for `file`.
pub fn blockdev_add_args(
    node_name: &str,
    path: &Path,
    is_block_device: bool,
    read_only: bool,
) -> Value {
    json!({
        "node-name": node_name,
        "driver": "raw",
        "read-only": read_only,
        "file": {
            "driver": if is_block_device { "host_device" } else { "file" },
            "filename": path.to_string_lossy(),
        },
    })
}

/// `device_add` arguments for a virtio-blk device in the bridge's `slot`.
pub fn device_add_args(block: &PluggedBlock) -> Value {
    json!({
        "driver": "virtio-blk-pci",
        "id": block.device_id,
        "drive": block.node_name,
        "bus": BRIDGE_ID,
        "addr": format!("{:#x}", block.slot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_lowest_first_and_come_back() {
        let mut slots = BridgeSlots::default();
        assert_eq!(slots.take(), Some(1));
        assert_eq!(slots.take(), Some(2));
        slots.free(1);
        assert_eq!(slots.take(), Some(1));
        for _ in 3..=31 {
            assert!(slots.take().is_some());
        }
        assert_eq!(slots.take(), None, "31 slots, then the bridge is full");
    }

    #[test]
    fn names_and_paths_are_upstreams() {
        let b = PluggedBlock::new("vol3", 0x0b);
        assert_eq!(b.pci_path, "02/0b");
        assert_eq!(b.device_id, "virtio-vol3");
        assert_eq!(b.node_name, "drive-vol3");
        let dev = device_add_args(&b);
        assert_eq!(dev["bus"], "pci-bridge-0");
        assert_eq!(dev["addr"], "0xb");
        assert_eq!(dev["drive"], "drive-vol3");
        let file = blockdev_add_args("drive-vol3", Path::new("/d/x.img"), false, true);
        assert_eq!(file["file"]["driver"], "file");
        assert_eq!(file["read-only"], true);
        let dev = blockdev_add_args("drive-vol3", Path::new("/dev/sdb"), true, false);
        assert_eq!(dev["file"]["driver"], "host_device");
        assert_eq!(
            bridge_device_arg(),
            "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=off,addr=0x2,io-reserve=4k,mem-reserve=1m,pref64-reserve=1m"
        );
    }
}
