//! The core's only source of randomness: a ChaCha20 CSPRNG seeded at construction.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Seeded CSPRNG. Production drivers seed it from OS entropy, tests from a fixed value.
#[derive(Debug, Clone)]
pub(crate) struct Rng(ChaCha20Rng);

impl Rng {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        Rng(ChaCha20Rng::from_seed(seed))
    }

    /// `n` characters from `[A-Za-z0-9]`, unbiased (rejection sampling).
    pub(crate) fn alnum(&mut self, n: usize) -> String {
        let mut out = String::with_capacity(n);
        while out.len() < n {
            let b = (self.0.next_u32() & 0xff) as u8;
            // 62 * 4 = 248: reject 248..=255 to stay unbiased.
            if b < 248 {
                out.push(ALNUM[(b % 62) as usize] as char);
            }
        }
        out
    }

    #[allow(dead_code)] // used by the key manager
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }
}

/// Expands a `u64` into a 32-byte seed (for tests and fixtures that name a small seed).
pub fn seed_from_u64(seed: u64) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}
