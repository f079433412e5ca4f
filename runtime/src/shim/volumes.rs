//! A sandbox's direct-assigned block volumes ([`crate::direct_volume`]):
//! hot-plugged into the VM when a container mounts one, mounted by the
//! agent (storage driver `blk`), unplugged when that container is deleted;
//! and the monitor socket's `/direct-volume/stats` and `/direct-volume/resize`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use protocols::agent::{volume_usage::Unit, Storage, VolumeStatsResponse};
use serde_json::{json, Map, Value};

use crate::agent_client::{AgentAddress, AgentClient};
use crate::direct_volume::{self, MountInfo};
use crate::hypervisor::hotplug::PluggedBlock;
use crate::hypervisor::Vm;

/// Upstream's storage driver for a virtio-blk device found by PCI path.
pub const DRIVER_BLK: &str = "blk";
/// Where the agent mounts block storages (upstream's
/// `/run/kata-containers/sandbox/storage/<base64url(source)>`).
pub const GUEST_STORAGE_DIR: &str = "/run/kata-containers/sandbox/storage";
/// How long the guest has to release an unplugged device.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stats or resize call may take: a resize waits for the guest
/// to see the new capacity, then grows the filesystem.
const VOLUME_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong, with the HTTP status the monitor socket answers.
#[derive(Debug, PartialEq, Eq)]
pub struct VolumeOpError {
    pub status: u16,
    pub message: String,
}

impl VolumeOpError {
    fn bad(message: String) -> Self {
        VolumeOpError {
            status: 400,
            message,
        }
    }
    fn not_found(message: String) -> Self {
        VolumeOpError {
            status: 404,
            message,
        }
    }
    fn failed(message: String) -> Self {
        VolumeOpError {
            status: 500,
            message,
        }
    }
}

#[derive(Debug, Clone)]
struct Attached {
    container: String,
    volume_path: String,
    /// The host device or image, as in the mount info.
    device: PathBuf,
    guest_path: String,
    block: PluggedBlock,
}

/// The block volumes of one sandbox.
pub struct BlockVolumes {
    sid: String,
    store: PathBuf,
    vm: Arc<Mutex<Option<Vm>>>,
    agent: AgentAddress,
    attached: Mutex<Vec<Attached>>,
    next: AtomicU32,
}

impl std::fmt::Debug for BlockVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockVolumes")
            .field("sid", &self.sid)
            .field("attached", &self.attached().len())
            .finish_non_exhaustive()
    }
}

impl BlockVolumes {
    pub fn new(sid: &str, store: &Path, vm: Arc<Mutex<Option<Vm>>>, agent: AgentAddress) -> Self {
        BlockVolumes {
            sid: sid.into(),
            store: store.into(),
            vm,
            agent,
            attached: Mutex::new(Vec::new()),
            next: AtomicU32::new(0),
        }
    }

    fn attached(&self) -> std::sync::MutexGuard<'_, Vec<Attached>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_vm<T>(
        &self,
        f: impl FnOnce(&mut Vm) -> Result<T, crate::hypervisor::VmError>,
    ) -> Result<T, String> {
        let mut vm = self.vm.lock().unwrap_or_else(|e| e.into_inner());
        match vm.as_mut() {
            Some(vm) => f(vm).map_err(|e| crate::error_chain(&e)),
            None => Err("the VM was shut down".into()),
        }
    }

    /// The mount info of `volume_path` if it is a direct-assigned volume.
    pub fn lookup(&self, volume_path: &str) -> Result<Option<MountInfo>, String> {
        direct_volume::mount_info(&self.store, volume_path).map_err(|e| e.to_string())
    }

    /// Plugs `info`'s device into the VM for container `cid`; returns the
    /// storage the agent mounts and its guest mount point.
    pub fn attach(
        &self,
        cid: &str,
        volume_path: &str,
        info: &MountInfo,
    ) -> Result<Storage, String> {
        let device = PathBuf::from(&info.device);
        if let Some(other) = self.attached().iter().find(|a| a.device == device) {
            return Err(format!(
                "direct volume {volume_path}: device {} is already plugged for container {}; a block device is mounted by one container",
                device.display(),
                other.container
            ));
        }
        let name = format!("vol{}", self.next.fetch_add(1, Ordering::Relaxed));
        let block = self
            .with_vm(|vm| vm.hotplug_block(&name, &device, info.read_only()))
            .map_err(|e| {
                format!(
                    "direct volume {volume_path}: hot-plug {}: {e}",
                    device.display()
                )
            })?;
        let guest_path = format!(
            "{GUEST_STORAGE_DIR}/{}",
            base64::engine::general_purpose::URL_SAFE.encode(&block.pci_path)
        );
        let mut storage = Storage::new();
        storage.driver = DRIVER_BLK.into();
        storage.source = block.pci_path.clone();
        storage.fstype = info.fstype.clone();
        storage.options = info.options.clone();
        storage.mount_point = guest_path.clone();
        log::info!(
            "sandbox {}: container {cid}: direct volume {volume_path} ({}, {}) plugged at PCI path {}, mounted at {guest_path}",
            self.sid,
            device.display(),
            info.fstype,
            block.pci_path
        );
        if let Err(e) = direct_volume::record_sandbox(&self.store, volume_path, &self.sid) {
            log::warn!("sandbox {}: {e}", self.sid);
        }
        self.attached().push(Attached {
            container: cid.into(),
            volume_path: volume_path.into(),
            device,
            guest_path,
            block,
        });
        Ok(storage)
    }

    /// Unplugs the volumes of container `cid` (after the agent unmounted
    /// them, at RemoveContainer). Returns what could not be done.
    pub fn detach_container(&self, cid: &str) -> Vec<String> {
        let gone: Vec<Attached> = {
            let mut all = self.attached();
            let (gone, kept) = all.drain(..).partition(|a| a.container == cid);
            *all = kept;
            gone
        };
        let mut problems = Vec::new();
        for a in gone {
            direct_volume::forget_sandbox(&self.store, &a.volume_path, &self.sid);
            if let Err(e) = self.with_vm(|vm| vm.unplug_block(&a.block, UNPLUG_TIMEOUT)) {
                problems.push(format!(
                    "unplug direct volume {} ({}): {e}",
                    a.volume_path,
                    a.device.display()
                ));
            }
        }
        problems
    }

    /// The VM is gone: its devices went with it; only the records stay.
    pub fn forget_all(&self) {
        for a in self.attached().drain(..) {
            direct_volume::forget_sandbox(&self.store, &a.volume_path, &self.sid);
        }
    }

    fn find(&self, device: &str) -> Result<Attached, VolumeOpError> {
        self.attached()
            .iter()
            .find(|a| a.device == Path::new(device))
            .cloned()
            .ok_or_else(|| {
                VolumeOpError::not_found(format!(
                    "mount {device} not found in sandbox {}: no container of it mounts that device",
                    self.sid
                ))
            })
    }

    fn agent(&self) -> Result<AgentClient, VolumeOpError> {
        AgentClient::connect(&self.agent, VOLUME_CALL_TIMEOUT, VOLUME_CALL_TIMEOUT)
            .map_err(|e| VolumeOpError::failed(crate::error_chain(&e)))
    }

    /// `/direct-volume/stats`: the agent's `GetVolumeStats` of the device's
    /// guest mount, as the JSON upstream's shim answers.
    pub fn stats(&self, device: &str) -> Result<String, VolumeOpError> {
        let a = self.find(device)?;
        let reply = self
            .agent()?
            .get_volume_stats(&a.guest_path)
            .map_err(|e| VolumeOpError::failed(crate::error_chain(&e)))?;
        Ok(stats_json(&reply).to_string())
    }

    /// `/direct-volume/resize`: grows the device to `size` bytes on the
    /// host (`block_resize`), then the filesystem in the guest.
    pub fn resize(&self, device: &str, size: u64) -> Result<(), VolumeOpError> {
        let a = self.find(device)?;
        let now = device_size(&a.device)
            .map_err(|e| VolumeOpError::failed(format!("size of {}: {e}", a.device.display())))?;
        if size < now {
            return Err(VolumeOpError::bad(format!(
                "shrinking is not supported: {} is {now} bytes, asked {size}; give a size of at least {now}",
                a.device.display()
            )));
        }
        if size > now {
            self.with_vm(|vm| vm.resize_block(&a.block, size))
                .map_err(|e| VolumeOpError::failed(format!("grow {}: {e}", a.device.display())))?;
        }
        self.agent()?
            .resize_volume(&a.guest_path, size)
            .map_err(|e| VolumeOpError::failed(crate::error_chain(&e)))?;
        log::info!(
            "sandbox {}: direct volume {} ({}) grown from {now} to {size} bytes",
            self.sid,
            a.volume_path,
            a.device.display()
        );
        Ok(())
    }
}

/// The size of a regular file or block device, in bytes.
pub fn device_size(path: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(path)?.seek(SeekFrom::End(0))
}

/// Upstream's JSON of a `VolumeStatsResponse`: Go's encoding of the
/// generated struct, where zero values are left out and `unit` is a number.
pub fn stats_json(reply: &VolumeStatsResponse) -> Value {
    let mut out = Map::new();
    let usage: Vec<Value> = reply
        .usage
        .iter()
        .map(|u| {
            let mut m = Map::new();
            for (k, v) in [
                ("available", u.available),
                ("total", u.total),
                ("used", u.used),
            ] {
                if v != 0 {
                    m.insert(k.into(), json!(v));
                }
            }
            let unit = u.unit.enum_value_or(Unit::UNKNOWN) as i32;
            if unit != 0 {
                m.insert("unit".into(), json!(unit));
            }
            Value::Object(m)
        })
        .collect();
    if !usage.is_empty() {
        out.insert("usage".into(), Value::Array(usage));
    }
    if let Some(c) = reply.volume_condition.as_ref() {
        let mut m = Map::new();
        if c.abnormal {
            m.insert("abnormal".into(), json!(true));
        }
        if !c.message.is_empty() {
            m.insert("message".into(), json!(c.message));
        }
        out.insert("volume_condition".into(), Value::Object(m));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent::{VolumeCondition, VolumeUsage};

    #[test]
    fn stats_are_upstreams_json() {
        let mut reply = VolumeStatsResponse::new();
        let mut bytes = VolumeUsage::new();
        bytes.total = 100;
        bytes.available = 60;
        bytes.used = 40;
        bytes.unit = Unit::BYTES.into();
        let mut inodes = VolumeUsage::new();
        inodes.total = 10;
        inodes.available = 10;
        inodes.unit = Unit::INODES.into();
        reply.usage = vec![bytes, inodes];
        let mut c = VolumeCondition::new();
        c.message = "OK".into();
        reply.volume_condition = Some(c).into();
        assert_eq!(
            stats_json(&reply).to_string(),
            r#"{"usage":[{"available":60,"total":100,"unit":1,"used":40},{"available":10,"total":10,"unit":2}],"volume_condition":{"message":"OK"}}"#
        );
    }

    #[test]
    fn a_file_has_its_length_as_size() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(12345).unwrap();
        assert_eq!(device_size(f.path()).unwrap(), 12345);
    }
}
