//! xxh3-64, the checksum of every record, index, header, footer and shard (format-spec), with
//! its long-input loop chosen at run time.
//!
//! xxhash-rust picks its SIMD implementation when it is compiled (`cfg(target_feature)`): a
//! default x86_64 build always runs its SSE2 loop, even on a CPU with AVX2. twox-hash (pure
//! Rust, no dependencies with the features used here) detects AVX2 at run time
//! (`is_x86_feature_detected!`) for inputs above 240 bytes. Both compute the same function, the
//! XXH3-64 of the reference implementation with seed 0 and the default secret, so a stored
//! checksum does not depend on which one made it; the tests below compare them over every
//! length up to 4096, larger inputs, odd alignments and split streaming writes.
//!
//! The choice, made here and nowhere else:
//! - x86_64 with AVX2 detected at run time, inputs above 240 bytes (one-shot) and streaming
//!   hashers: twox-hash, whose AVX2 loop processes a 64-byte stripe in two 32-byte vectors
//!   instead of four 16-byte ones.
//! - Everything else (short inputs, which xxh3 hashes without its stripe loop; a CPU without
//!   AVX2; other architectures; miri, which cannot run the AVX2 intrinsics): xxhash-rust, as
//!   before.
//!
//! This module has no `unsafe` of its own: twox-hash's dispatch calls its AVX2 code only after
//! its own `is_x86_feature_detected!("avx2")`.

/// Inputs up to this length are hashed without xxh3's stripe loop (xxh3's own cut-off), so
/// there is nothing for AVX2 to speed up.
const SHORT: usize = 240;

/// Whether twox-hash's AVX2 loop runs on this machine (checked once by std, then a load).
#[inline]
fn avx2() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        false
    }
}

/// xxh3-64 (seed 0, default secret) of `data`.
#[inline]
pub(crate) fn xxh3_64(data: &[u8]) -> u64 {
    if data.len() > SHORT && avx2() {
        twox_hash::XxHash3_64::oneshot(data)
    } else {
        xxhash_rust::xxh3::xxh3_64(data)
    }
}

/// A streaming xxh3-64 (seed 0, default secret): [`Xxh3::update`] with the bytes in any
/// pieces, then [`Xxh3::digest`], equal to [`xxh3_64`] of their concatenation.
#[derive(Clone)]
pub(crate) struct Xxh3(Inner);

// Neither is boxed (the states are 576 and 368 bytes, the enum 640, against 576 for xxhash-rust
// alone before): boxing would add an allocation per hasher and per clone. Cloning
// twox-hash's state copies its boxed 192-byte secret: one small allocation per clone (the
// writer clones once per sample, to rewind a failed append), next to the writer's own
// per-sample `Vec`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Inner {
    Avx2(twox_hash::XxHash3_64),
    Portable(xxhash_rust::xxh3::Xxh3),
}

impl Xxh3 {
    /// A hasher over no bytes yet.
    pub(crate) fn new() -> Self {
        Xxh3(if avx2() {
            Inner::Avx2(twox_hash::XxHash3_64::default())
        } else {
            Inner::Portable(xxhash_rust::xxh3::Xxh3::new())
        })
    }

    /// Appends `data` to the hashed bytes.
    #[inline]
    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Avx2(h) => std::hash::Hasher::write(h, data),
            Inner::Portable(h) => h.update(data),
        }
    }

    /// The xxh3-64 of every byte given so far (the hasher can go on).
    pub(crate) fn digest(&self) -> u64 {
        match &self.0 {
            Inner::Avx2(h) => std::hash::Hasher::finish(h),
            Inner::Portable(h) => h.digest(),
        }
    }
}

impl Default for Xxh3 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Xxh3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Avx2(_) => "avx2",
            Inner::Portable(_) => "portable",
        };
        f.debug_struct("Xxh3").field("impl", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| r.next_u64() as u8).collect()
    }

    fn reference(data: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(data)
    }

    /// twox-hash itself, whatever this machine has: the same function as xxhash-rust (on a
    /// machine with AVX2 this is the AVX2 loop; `dispatch_is_avx2_here` says whether it is).
    #[test]
    fn twox_equals_xxhash_rust_every_length_to_4096() {
        let data = bytes(4096 + 64, 1);
        for len in 0..=4096 {
            for start in [0, 1, 7, 33] {
                let d = &data[start..start + len];
                assert_eq!(
                    twox_hash::XxHash3_64::oneshot(d),
                    reference(d),
                    "len {len} start {start}"
                );
            }
        }
    }

    #[test]
    fn xxh3_64_equals_xxhash_rust() {
        let data = bytes((1 << 20) + 4096 + 64, 2);
        let mut lens: Vec<usize> = (0..=4096).collect();
        // Block edges of xxh3 (1024-byte blocks of 16 stripes of 64 bytes with the default
        // secret), and large inputs: 16 KiB records, 1 MiB, odd sizes around them.
        for base in [1024usize, 2048, 16 << 10, 64 << 10, 1 << 20] {
            lens.extend([
                base - 65,
                base - 64,
                base - 1,
                base,
                base + 1,
                base + 63,
                base + 64,
            ]);
        }
        lens.extend([100_003, 777_777, (1 << 20) + 4096]);
        for (i, &len) in lens.iter().enumerate() {
            let start = [0, 1, 3, 8, 31, 64][i % 6];
            let d = &data[start..start + len];
            assert_eq!(xxh3_64(d), reference(d), "len {len} start {start}");
        }
        // Random lengths and alignments.
        let mut r = SplitMix64::new(3);
        for _ in 0..500 {
            let len = r.below(300_000) as usize;
            let start = r.below(64) as usize;
            let d = &data[start..start + len];
            assert_eq!(xxh3_64(d), reference(d), "len {len} start {start}");
        }
    }

    /// The reference implementation's published values (xxhsum): the empty input and, to
    /// pin the long path too, the golden fixtures' stored checksums verified in
    /// tests/golden.rs.
    #[test]
    fn known_value() {
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn streaming_equals_one_shot_in_any_pieces() {
        let data = bytes(300_000, 4);
        let mut r = SplitMix64::new(5);
        for total in [
            0usize,
            1,
            17,
            240,
            241,
            255,
            256,
            257,
            1024,
            4096,
            16 << 10,
            300_000,
        ] {
            let d = &data[..total];
            let want = reference(d);
            for round in 0..8 {
                // Both implementations, whichever this machine's `new` picks.
                let mut h = if round % 2 == 0 {
                    Xxh3::new()
                } else {
                    Xxh3(Inner::Portable(xxhash_rust::xxh3::Xxh3::new()))
                };
                let mut at = 0;
                while at < total {
                    // Pieces of 1 byte up to 20 KiB, some exactly a stripe or the buffer.
                    let piece = match round {
                        0 => 1,
                        1 => 64,
                        2 => 256,
                        _ => 1 + r.below(20_000) as usize,
                    };
                    let end = (at + piece).min(total);
                    h.update(&d[at..end]);
                    at = end;
                }
                assert_eq!(h.digest(), want, "total {total} round {round}");
                // digest does not end the hasher; a clone goes on independently.
                let mut c = h.clone();
                c.update(b"more");
                let mut all = d.to_vec();
                all.extend_from_slice(b"more");
                assert_eq!(c.digest(), reference(&all));
                assert_eq!(h.digest(), want);
            }
        }
    }

    /// Says which implementation this machine's tests exercised (printed with --nocapture);
    /// on x86_64 with AVX2 the fast path must be the one chosen.
    #[test]
    fn dispatch_is_avx2_here() {
        let h = Xxh3::new();
        println!("xxh3 implementation here: {h:?}");
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        assert_eq!(
            matches!(h.0, Inner::Avx2(_)),
            std::arch::is_x86_feature_detected!("avx2")
        );
    }
}
