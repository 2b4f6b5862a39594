//! A small deterministic PRNG (SplitMix64) for branches, tags, Call-IDs and
//! jitter. Seeded by the shell (from the OS) in production and by the test in
//! simulations, so a simulated run is reproducible bit for bit.

use std::time::Duration;

/// SplitMix64: fast, 64-bit state, good enough statistical quality for
/// identifiers and jitter (not for secrets: digest keys come from the OS).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the tiny bias is irrelevant for jitter.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A duration uniform in `[0, d]`, at millisecond resolution.
    pub fn jitter(&mut self, d: Duration) -> Duration {
        Duration::from_millis(self.below(d.as_millis() as u64 + 1))
    }

    /// 32 bytes for seeding a digest client's cnonce generator.
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for c in s.chunks_mut(8) {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        s
    }

    /// Appends `n` random lower-case hex digits (n ≤ 16) to `out`.
    pub fn hex_into(&mut self, out: &mut String, n: usize) {
        use std::fmt::Write;
        let v = self.next_u64();
        let _ = write!(out, "{:016x}", v);
        out.truncate(out.len() - (16 - n.min(16)));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_bounds_hold() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(10) < 10);
            b.below(10);
        }
        assert_eq!(a.below(0), 0);
        let mut s = String::from("z9hG4bK");
        a.hex_into(&mut s, 12);
        assert_eq!(s.len(), 19);
    }
}
