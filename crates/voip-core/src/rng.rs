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

/// A map that is only looked up, never iterated, over keys remote users choose (user ids, state
/// keys): a hash lookup instead of a B-tree's dozens of string comparisons per key (10 000 room
/// members: ≈ 24 `memcmp`s per lookup). Not `RandomState` (OS randomness, which the core never
/// draws; see `clippy.toml`): the hash is SipHash keyed from the core's seed ([`HashKeys`]), so
/// it stays deterministic for a seed, and its keys are secret (no collisions chosen ahead).
/// Never iterate one where the order could show: it is an order no one chose.
#[allow(clippy::disallowed_types)]
pub(crate) type Lookup<K, V> = std::collections::HashMap<K, V, HashKeys>;

/// The SipHash keys of the core's [`Lookup`] maps, from the core's seed (a ChaCha20 stream of
/// its own: the stream [`Rng`] draws from is untouched).
#[derive(Clone, Copy, Default)]
pub(crate) struct HashKeys(u64, u64);

impl std::fmt::Debug for HashKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret: never in a log.
        f.write_str("HashKeys(..)")
    }
}

impl HashKeys {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        rng.set_stream(1);
        HashKeys(rng.next_u64(), rng.next_u64())
    }

    /// An empty map hashing with these keys.
    pub(crate) fn lookup<K, V>(self) -> Lookup<K, V> {
        Lookup::with_hasher(self)
    }
}

impl std::hash::BuildHasher for HashKeys {
    // SipHash-2-4 with our keys: std's keyed SipHash (`DefaultHasher` cannot be keyed).
    #[allow(deprecated)]
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.0, self.1)
    }
}

/// Expands a `u64` into a 32-byte seed (for tests and fixtures that name a small seed).
pub fn seed_from_u64(seed: u64) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}
