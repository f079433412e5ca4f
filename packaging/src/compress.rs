//! The archives' compressors, multi-threaded with byte-stable output.
//!
//! The three archives each compress the whole tree (about 470 MB with the
//! debian guest), so the release spends most of its packaging time here.
//! Both encoders below split the input into independent jobs whose
//! boundaries depend on the level or block size only, never on the number
//! of workers: any machine, with any core count, writes the same bytes
//! (the tests check 1 worker against several). Single-threaded modes
//! write different (but equally stable) bytes, so they are never used.

use std::io::Write;

use anyhow::{Context, Result};

/// zstd level of the tarball and the RPM payload.
pub const ZSTD_LEVEL: i32 = 19;

/// xz preset of the .deb's members (dpkg-deb's default level).
pub const XZ_PRESET: u32 = 6;

/// xz block size: liblzma's default for preset 6 (three times its 8 MiB
/// dictionary), fixed here so that it cannot follow the thread count.
pub const XZ_BLOCK_SIZE: u64 = 24 << 20;

/// Workers per compressor: the host's cores. Only the speed depends on it.
pub fn workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// A zstd writer in multi-threaded mode, with the frame checksum.
pub fn zstd_encoder<W: Write>(w: W, workers: u32) -> Result<zstd::stream::Encoder<'static, W>> {
    let mut encoder = zstd::stream::Encoder::new(w, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    encoder
        .multithread(workers.max(1))
        .context("zstd: multi-threaded mode unavailable")?;
    Ok(encoder)
}

/// An xz writer (CRC64, as xz(1) writes) from liblzma's multi-threaded
/// encoder with a fixed block size.
pub fn xz_encoder<W: Write>(w: W, workers: u32) -> Result<liblzma::write::XzEncoder<W>> {
    xz_encoder_with_block(w, workers, XZ_BLOCK_SIZE)
}

fn xz_encoder_with_block<W: Write>(
    w: W,
    workers: u32,
    block_size: u64,
) -> Result<liblzma::write::XzEncoder<W>> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .preset(XZ_PRESET)
        .threads(workers.max(1))
        .block_size(block_size)
        .check(liblzma::stream::Check::Crc64)
        .encoder()
        .context("xz: cannot start the multi-threaded encoder")?;
    Ok(liblzma::write::XzEncoder::new_stream(w, stream))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Mostly zeros (like the images) with incompressible stretches, long
    /// enough to span several zstd jobs and xz blocks.
    fn sample(len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for chunk in data.chunks_mut(4 << 20) {
            for b in chunk.iter_mut().take(256 << 10) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        data
    }

    fn zstd_bytes(data: &[u8], workers: u32) -> Vec<u8> {
        let mut e = zstd_encoder(Vec::new(), workers).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz_bytes(data: &[u8], workers: u32, block: u64) -> Vec<u8> {
        let mut e = xz_encoder_with_block(Vec::new(), workers, block).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_the_worker_count() {
        // Level 19 jobs are 32 MiB (4 windows of 8 MiB): three jobs.
        let data = sample(80 << 20);
        let one = zstd_bytes(&data, 1);
        assert_eq!(one, zstd_bytes(&data, 3));
        let mut back = Vec::new();
        zstd::stream::Decoder::new(&one[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "zstd round trip differs");
    }

    #[test]
    fn xz_bytes_do_not_depend_on_the_worker_count() {
        // Small blocks keep the test quick; the block size is what fixes
        // the job boundaries, whatever its value.
        let data = sample(12 << 20);
        let one = xz_bytes(&data, 1, 1 << 20);
        assert_eq!(one, xz_bytes(&data, 4, 1 << 20));
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "xz round trip differs");
    }

    #[test]
    fn xz_blocks_follow_the_block_size() {
        let data = sample(12 << 20);
        // A different block size must change the bytes: proof that the
        // size given is the one used (and so the one that fixes output).
        assert_ne!(xz_bytes(&data, 2, 1 << 20), xz_bytes(&data, 2, 2 << 20));
    }
}
