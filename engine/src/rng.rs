//! The engine's random numbers: branches, tags, Call-IDs, push ids, the
//! phones' nonce key, digest cnonces and jitter. A ChaCha20 stream (a CSPRNG):
//! one observed branch or tag tells nothing about the next, so an off-path
//! attacker cannot predict another leg's branch to inject a response, nor
//! forge a nonce. The shell keys it from the OS ([`RngKey`]); simulations
//! seed it from a number so a run is reproducible bit for bit.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::fmt;
use std::time::Duration;

/// 32 bytes from the OS that key a shard's CSPRNG. Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RngKey(pub [u8; 32]);

impl fmt::Debug for RngKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RngKey(<redacted>)")
    }
}

/// ChaCha20 keyed by the shell, or seeded from a number in tests.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha20Rng);

impl Rng {
    /// A generator seeded from a number: reproducible, for simulations
    /// and tests (predictable to anyone who knows the number).
    pub fn new(seed: u64) -> Self {
        Rng(ChaCha20Rng::seed_from_u64(seed))
    }

    /// A generator keyed with 32 bytes from the OS.
    pub fn from_key(key: RngKey) -> Self {
        Rng(ChaCha20Rng::from_seed(key.0))
    }

    /// Mixes fresh OS entropy into the stream (the shell calls it now and
    /// then): what came before says nothing about what follows.
    pub fn reseed(&mut self, key: RngKey) {
        let mut k = key.0;
        let mut own = [0u8; 32];
        self.0.fill_bytes(&mut own);
        for (a, b) in k.iter_mut().zip(own) {
            *a ^= b;
        }
        self.0 = ChaCha20Rng::from_seed(k);
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
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

    /// 32 random bytes (a key for a digest client's cnonces or the
    /// phones' nonce HMAC).
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.0.fill_bytes(&mut s);
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

    #[test]
    fn keyed_streams_differ_and_reseeding_changes_the_stream() {
        let mut a = Rng::from_key(RngKey([1; 32]));
        let mut b = Rng::from_key(RngKey([2; 32]));
        assert_ne!(a.next_u64(), b.next_u64());
        let mut c = a.clone();
        c.reseed(RngKey([9; 32]));
        assert_ne!(a.next_u64(), c.next_u64());
        assert_eq!(format!("{:?}", RngKey([7; 32])), "RngKey(<redacted>)");
    }
}
