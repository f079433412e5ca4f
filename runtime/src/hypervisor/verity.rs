//! dm-verity roots: upstream's `kernel_verity_params` string (what `xtask
//! image --verity` records in the manifest) and the kernel parameters that
//! make the guest mount its root through dm-verity (dm-init's
//! `dm-mod.create`, no initramfs needed).
//!
//! The image holds the filesystem as partition 1 and its hash tree, with no
//! verity superblock, as partition 2.

use std::fmt;

/// What `kernel_verity_params` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    pub data_block_size: u64,
    pub hash_block_size: u64,
}

impl fmt::Display for VerityParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "root_hash={},salt={},data_blocks={},data_block_size={},hash_block_size={}",
            self.root_hash, self.salt, self.data_blocks, self.data_block_size, self.hash_block_size
        )
    }
}

const EXAMPLE: &str =
    "root_hash=<64 hex>,salt=<hex>,data_blocks=<n>,data_block_size=4096,hash_block_size=4096";

fn hex_of(key: &str, v: &str, exact: Option<usize>) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len().is_multiple_of(2)
        && v.bytes().all(|b| b.is_ascii_hexdigit())
        && exact.is_none_or(|n| v.len() == n);
    if !ok {
        return Err(match exact {
            Some(n) => format!("{key}={v:?} is not {n} hex digits"),
            None => format!("{key}={v:?} is not an even number of hex digits"),
        });
    }
    Ok(v.to_ascii_lowercase())
}

impl std::str::FromStr for VerityParams {
    type Err = String;

    /// Every key once, nothing else: a typo must not boot an unverified
    /// root, or one the kernel refuses with a less clear message.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut root_hash = None;
        let mut salt = None;
        let mut data_blocks = None;
        let mut data_block_size = None;
        let mut hash_block_size = None;
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not key=value; expected {EXAMPLE}"))?;
            let value = value.trim();
            let number = |v: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{key}={v:?} is not a positive number"))
            };
            let size = |v: &str| -> Result<u64, String> {
                let n = number(v)?;
                if !(512..=65536).contains(&n) || !n.is_power_of_two() {
                    return Err(format!("{key}={v}: a power of two from 512 to 65536"));
                }
                Ok(n)
            };
            let slot = match key.trim() {
                "root_hash" => root_hash.replace(hex_of(key, value, Some(64))?).is_some(),
                "salt" => salt.replace(hex_of(key, value, None)?).is_some(),
                "data_blocks" => data_blocks.replace(number(value)?).is_some(),
                "data_block_size" => data_block_size.replace(size(value)?).is_some(),
                "hash_block_size" => hash_block_size.replace(size(value)?).is_some(),
                other => return Err(format!("unknown key {other:?}; expected {EXAMPLE}")),
            };
            if slot {
                return Err(format!("{} is given twice", key.trim()));
            }
        }
        let missing = |k: &str| format!("{k} is missing; expected {EXAMPLE}");
        Ok(VerityParams {
            root_hash: root_hash.ok_or_else(|| missing("root_hash"))?,
            salt: salt.ok_or_else(|| missing("salt"))?,
            data_blocks: data_blocks.ok_or_else(|| missing("data_blocks"))?,
            data_block_size: data_block_size.ok_or_else(|| missing("data_block_size"))?,
            hash_block_size: hash_block_size.ok_or_else(|| missing("hash_block_size"))?,
        })
    }
}

/// The name dm-init gives the verified root (`/dev/dm-0`, the first
/// device-mapper device, as nothing else creates one before it).
pub const ROOT_DEVICE: &str = "/dev/dm-0";

impl VerityParams {
    /// The kernel parameters that map `data_dev` (partition 1) verified by
    /// the hash tree on `hash_dev` (partition 2, from its first block) and
    /// make it the root, read-only.
    pub fn kernel_params(&self, data_dev: &str, hash_dev: &str) -> Vec<String> {
        let sectors = self.data_blocks * self.data_block_size / 512;
        vec![
            format!(
                "dm-mod.create=\"vroot,,,ro,0 {sectors} verity 1 {data_dev} {hash_dev} {} {} {} 0 sha256 {} {}\"",
                self.data_block_size, self.hash_block_size, self.data_blocks, self.root_hash, self.salt
            ),
            // pmem partitions appear asynchronously; dm-init waits for them.
            format!("dm-mod.waitfor={data_dev},{hash_dev}"),
            format!("root={ROOT_DEVICE}"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "root_hash=69f1faf047532e95037e25fda9c284f4114c830e1c43421e6227d3604b41f6f9,salt=abab,data_blocks=2048,data_block_size=4096,hash_block_size=4096";

    #[test]
    fn upstreams_string_round_trips_and_builds_the_dm_table() {
        let p: VerityParams = GOOD.parse().unwrap();
        assert_eq!(p.to_string(), GOOD);
        let k = p.kernel_params("/dev/pmem0p1", "/dev/pmem0p2");
        assert_eq!(
            k[0],
            "dm-mod.create=\"vroot,,,ro,0 16384 verity 1 /dev/pmem0p1 /dev/pmem0p2 4096 4096 2048 0 sha256 69f1faf047532e95037e25fda9c284f4114c830e1c43421e6227d3604b41f6f9 abab\""
        );
        assert_eq!(k[1], "dm-mod.waitfor=/dev/pmem0p1,/dev/pmem0p2");
        assert_eq!(k[2], "root=/dev/dm-0");
    }

    #[test]
    fn malformed_strings_say_what_is_wrong() {
        for (bad, says) in [
            ("", "not key=value"),
            ("root_hash=zz", "64 hex digits"),
            (&GOOD.replace("salt=abab", "salt=abc"), "even number"),
            (
                &GOOD.replace("data_blocks=2048", "data_blocks=0"),
                "positive",
            ),
            (&GOOD.replace("4096,hash", "1000,hash"), "power of two"),
            (&format!("{GOOD},salt=ab"), "twice"),
            (&format!("{GOOD},hash=sha1"), "unknown key"),
            (&GOOD.replace(",salt=abab", ""), "salt is missing"),
        ] {
            let e = bad.parse::<VerityParams>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
