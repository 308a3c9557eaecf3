//! Media keys for LiveKit's frame encryption.
//!
//! The core generates, distributes and receives the keys (`Event::EncryptionKey`); LiveKit's SDK
//! encrypts and decrypts frames with them. [`KeyProvider`] is the seam: its methods are those of
//! the LiveKit Rust SDK's `livekit::e2ee::key_provider::KeyProvider` (and map one to one onto the
//! JS SDK's `BaseKeyProvider`, see `docs/livekit.md`), so an app implements it by forwarding to
//! its SDK. [`InMemoryKeyProvider`] keeps the keys itself and derives frame keys and ratchets
//! exactly as LiveKit does, for tests and for apps that drive their own frame cryptor.
//!
//! Key material is imported as LiveKit does:
//! * [`KeyDerivation::Hkdf`] (Element Call): frame key = HKDF-SHA-256(ikm = key, salt =
//!   `ratchet_salt`, info = 128 zero bytes), 16 bytes (AES-128-GCM); ratchet = the same HKDF with
//!   32 bytes of output, which becomes the new key material;
//! * [`KeyDerivation::Pbkdf2`] (LiveKit's default for passphrases): PBKDF2-HMAC-SHA-256 with
//!   `ratchet_salt` and 100 000 iterations, same output sizes.

use std::collections::BTreeMap;

use hkdf::Hkdf;
use sha2::Sha256;
use voip_core::{Event, MembershipDialect, Participant};

use crate::jwt::TokenEndpoint;

/// LiveKit's default ratchet salt (also the frame-key derivation salt).
pub const DEFAULT_RATCHET_SALT: &[u8] = b"LKFrameEncryptionKey";

/// How raw key material becomes a frame key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyDerivation {
    /// PBKDF2-HMAC-SHA-256, 100 000 iterations (LiveKit's default).
    Pbkdf2,
    /// HKDF-SHA-256 (what Element Call uses: keys are random bytes, not passphrases).
    Hkdf,
}

/// Options of a key provider, as in LiveKit's `KeyProviderOptions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyProviderOptions {
    /// How many ratchet steps a receiver tries on a decryption failure.
    pub ratchet_window_size: i32,
    /// Ratchet and derivation salt.
    pub ratchet_salt: Vec<u8>,
    /// Decryption failures tolerated before a key is marked invalid (`-1`: unlimited).
    pub failure_tolerance: i32,
    /// Number of key slots per participant; indices wrap modulo this.
    pub key_ring_size: u32,
    /// Key import.
    pub key_derivation: KeyDerivation,
    /// One key for everyone (LiveKit shared-key mode) instead of per-participant keys.
    pub shared_key: bool,
}

impl Default for KeyProviderOptions {
    /// LiveKit's Rust SDK defaults: window 16, ring 16, PBKDF2, per participant.
    fn default() -> Self {
        KeyProviderOptions {
            ratchet_window_size: 16,
            ratchet_salt: DEFAULT_RATCHET_SALT.to_vec(),
            failure_tolerance: -1,
            key_ring_size: 16,
            key_derivation: KeyDerivation::Pbkdf2,
            shared_key: false,
        }
    }
}

impl KeyProviderOptions {
    /// What Element Call's `MatrixKeyProvider` uses: per-participant keys, HKDF import, ratchet
    /// window 10, key ring 256.
    pub fn element_call() -> Self {
        KeyProviderOptions {
            ratchet_window_size: 10,
            key_ring_size: 256,
            key_derivation: KeyDerivation::Hkdf,
            ..KeyProviderOptions::default()
        }
    }
}

/// What LiveKit's SDKs need from a key provider. Indices are key-ring slots (the LiveKit Rust SDK
/// takes them as `i32`; the core's indices are always below 256).
pub trait KeyProvider: Send {
    /// The options (ring size, derivation, shared or per participant).
    fn options(&self) -> &KeyProviderOptions;
    /// Installs `key` for participant `identity` at `index`. `false` if refused.
    fn set_key(&mut self, identity: &str, index: u32, key: &[u8]) -> bool;
    /// Ratchets the key of `identity` at `index`; returns the new key material.
    fn ratchet_key(&mut self, identity: &str, index: u32) -> Option<Vec<u8>>;
    /// The key material of `identity` at `index`.
    fn get_key(&self, identity: &str, index: u32) -> Option<Vec<u8>>;
    /// Installs the shared key at `index` (shared-key mode).
    fn set_shared_key(&mut self, index: u32, key: &[u8]);
    /// Ratchets the shared key at `index`.
    fn ratchet_shared_key(&mut self, index: u32) -> Option<Vec<u8>>;
    /// The shared key at `index`.
    fn get_shared_key(&self, index: u32) -> Option<Vec<u8>>;
}

/// The frame key (AES-128-GCM) LiveKit derives from key material.
pub fn derive_frame_key(material: &[u8], options: &KeyProviderOptions) -> [u8; 16] {
    let mut out = [0u8; 16];
    derive(material, options, &mut out);
    out
}

/// One ratchet step, as LiveKit does it: 32 bytes derived from the material.
pub fn ratchet_key_material(material: &[u8], options: &KeyProviderOptions) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    derive(material, options, &mut out);
    out
}

fn derive(material: &[u8], options: &KeyProviderOptions, out: &mut [u8]) {
    match options.key_derivation {
        KeyDerivation::Hkdf => {
            Hkdf::<Sha256>::new(Some(&options.ratchet_salt), material)
                .expand(&[0u8; 128], out)
                .expect("16 or 32 bytes are valid HKDF-SHA-256 output lengths");
        }
        KeyDerivation::Pbkdf2 => pbkdf2::pbkdf2_hmac::<Sha256>(material, &options.ratchet_salt, 100_000, out),
    }
}

/// A key provider that keeps keys in memory (per participant and shared), with LiveKit's ring
/// semantics (indices modulo `key_ring_size`) and ratchet.
#[derive(Clone, Debug)]
pub struct InMemoryKeyProvider {
    options: KeyProviderOptions,
    keys: BTreeMap<(Option<String>, u32), Vec<u8>>,
    latest: Option<u32>,
}

impl InMemoryKeyProvider {
    /// Per-participant keys (unless `options.shared_key`).
    pub fn new(options: KeyProviderOptions) -> Self {
        InMemoryKeyProvider { options, keys: BTreeMap::new(), latest: None }
    }

    /// Shared-key mode with a first key at index 0 (LiveKit's `with_shared_key`).
    pub fn with_shared_key(options: KeyProviderOptions, key: &[u8]) -> Self {
        let mut p = InMemoryKeyProvider::new(KeyProviderOptions { shared_key: true, ..options });
        p.set_shared_key(0, key);
        p
    }

    /// The index of the key set last.
    pub fn latest_key_index(&self) -> Option<u32> {
        self.latest
    }

    /// The derived frame key of `identity` at `index`.
    pub fn frame_key(&self, identity: &str, index: u32) -> Option<[u8; 16]> {
        self.get_key(identity, index).map(|m| derive_frame_key(&m, &self.options))
    }

    /// Every participant identity holding at least one key.
    pub fn identities(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keys.keys().filter_map(|(i, _)| i.clone()).collect();
        v.dedup();
        v
    }

    /// Every `(index, key)` of a participant.
    pub fn keys_of(&self, identity: &str) -> Vec<(u32, Vec<u8>)> {
        self.keys
            .iter()
            .filter(|((i, _), _)| i.as_deref() == Some(identity))
            .map(|((_, idx), k)| (*idx, k.clone()))
            .collect()
    }

    fn slot(&self, index: u32) -> u32 {
        index % self.options.key_ring_size.max(1)
    }

    fn ratchet_at(&mut self, who: Option<String>, index: u32) -> Option<Vec<u8>> {
        let slot = self.slot(index);
        let k = self.keys.get_mut(&(who, slot))?;
        *k = ratchet_key_material(k, &self.options);
        Some(k.clone())
    }
}

impl KeyProvider for InMemoryKeyProvider {
    fn options(&self) -> &KeyProviderOptions {
        &self.options
    }

    fn set_key(&mut self, identity: &str, index: u32, key: &[u8]) -> bool {
        if key.is_empty() || identity.is_empty() {
            return false;
        }
        let slot = self.slot(index);
        self.keys.insert((Some(identity.to_owned()), slot), key.to_vec());
        self.latest = Some(slot);
        true
    }

    fn ratchet_key(&mut self, identity: &str, index: u32) -> Option<Vec<u8>> {
        self.ratchet_at(Some(identity.to_owned()), index)
    }

    fn get_key(&self, identity: &str, index: u32) -> Option<Vec<u8>> {
        self.keys.get(&(Some(identity.to_owned()), self.slot(index))).cloned()
    }

    fn set_shared_key(&mut self, index: u32, key: &[u8]) {
        let slot = self.slot(index);
        self.keys.insert((None, slot), key.to_vec());
        self.latest = Some(slot);
    }

    fn ratchet_shared_key(&mut self, index: u32) -> Option<Vec<u8>> {
        self.ratchet_at(None, index)
    }

    fn get_shared_key(&self, index: u32) -> Option<Vec<u8>> {
        self.keys.get(&(None, self.slot(index))).cloned()
    }
}

/// How a member's LiveKit participant identity is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityScheme {
    /// `@user:server:DEVICE`: state-event memberships, tokens from `/sfu/get`.
    Plain,
    /// unpadded base64 of SHA-256 over JSON `[user, device, member id]`: sticky memberships,
    /// tokens from `/get_token`.
    Hashed,
}

impl IdentityScheme {
    /// The LiveKit identity of `p`.
    pub fn identity(self, p: &Participant) -> String {
        match self {
            IdentityScheme::Plain => p.livekit_identity(),
            IdentityScheme::Hashed => p.livekit_hashed_identity(),
        }
    }

    /// The scheme a membership dialect implies (what Element Call assumes of remote members).
    pub fn for_dialect(dialect: MembershipDialect) -> Self {
        match dialect {
            MembershipDialect::Sticky => IdentityScheme::Hashed,
            MembershipDialect::MatrixRtc | MembershipDialect::Famedly => IdentityScheme::Plain,
        }
    }

    /// The scheme of tokens from an endpoint (all members of a call get their tokens from the
    /// same kind of service, so this is also the others').
    pub fn for_endpoint(endpoint: TokenEndpoint) -> Self {
        match endpoint {
            TokenEndpoint::GetToken => IdentityScheme::Hashed,
            TokenEndpoint::SfuGet => IdentityScheme::Plain,
        }
    }
}

/// A key installed by [`apply_encryption_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedKey {
    /// The LiveKit participant identity it was set for (`None` in shared-key mode).
    pub identity: Option<String>,
    /// Key index.
    pub index: u32,
    /// Whether it is our own key (for our encryptor).
    pub local: bool,
}

/// Why a key event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key is not base64.
    #[error("media key of {0} is not base64")]
    NotBase64(String),
    /// The provider refused it.
    #[error("the key provider refused the key of {identity} at index {index}")]
    Refused {
        /// Identity.
        identity: String,
        /// Index.
        index: u32,
    },
}

/// Installs the key of an `Event::EncryptionKey` (ours or a member's) into `provider`, under the
/// member's LiveKit identity per `scheme` (or as the shared key in shared-key mode). Other
/// events: `Ok(None)`.
pub fn apply_encryption_key(
    provider: &mut dyn KeyProvider,
    event: &Event,
    scheme: IdentityScheme,
) -> Result<Option<AppliedKey>, KeyError> {
    let Event::EncryptionKey { participant, local, index, key, .. } = event else { return Ok(None) };
    let identity = scheme.identity(participant);
    let bytes =
        voip_core::wire::keys::decode_key(key).ok_or_else(|| KeyError::NotBase64(identity.clone()))?;
    if provider.options().shared_key {
        provider.set_shared_key(*index, &bytes);
        return Ok(Some(AppliedKey { identity: None, index: *index, local: *local }));
    }
    if !provider.set_key(&identity, *index, &bytes) {
        return Err(KeyError::Refused { identity, index: *index });
    }
    tracing::debug!(%identity, index, local, "media key installed");
    Ok(Some(AppliedKey { identity: Some(identity), index: *index, local: *local }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use voip_core::{DeviceId, GroupCallId, RoomId, UserId};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hkdf_import_matches_rfc5869_construction() {
        // Independent check of the construction: HKDF-Extract = HMAC(salt, ikm); Expand T(1) =
        // HMAC(prk, info || 0x01).
        use hmac::{Hmac, Mac};
        let o = KeyProviderOptions::element_call();
        let material = [7u8; 16];
        let mut ext = Hmac::<Sha256>::new_from_slice(DEFAULT_RATCHET_SALT).unwrap();
        ext.update(&material);
        let prk = ext.finalize().into_bytes();
        let mut exp = Hmac::<Sha256>::new_from_slice(&prk).unwrap();
        exp.update(&[0u8; 128]);
        exp.update(&[1]);
        let t1 = exp.finalize().into_bytes();
        assert_eq!(hex(&derive_frame_key(&material, &o)), hex(&t1[..16]));
        assert_eq!(hex(&ratchet_key_material(&material, &o)), hex(&t1));
        let other_salt = KeyProviderOptions { ratchet_salt: b"x".to_vec(), ..o.clone() };
        assert_ne!(derive_frame_key(&material, &other_salt), derive_frame_key(&material, &o));
    }

    #[test]
    fn ring_ratchet_and_shared_mode() {
        let mut p = InMemoryKeyProvider::new(KeyProviderOptions::element_call());
        assert!(p.set_key("alice", 3, &[1; 16]));
        assert!(!p.set_key("alice", 4, &[]));
        assert_eq!(p.get_key("alice", 259), Some(vec![1; 16]), "indices wrap modulo the ring");
        let r1 = p.ratchet_key("alice", 3).unwrap();
        assert_eq!(r1.len(), 32);
        assert_eq!(p.get_key("alice", 3), Some(r1.clone()));
        let r2 = p.ratchet_key("alice", 3).unwrap();
        assert_ne!(r1, r2);
        assert_eq!(r2, ratchet_key_material(&r1, p.options()));
        assert_eq!(p.ratchet_key("bob", 0), None);
        assert_eq!(p.frame_key("alice", 3), Some(derive_frame_key(&r2, p.options())));
        assert_eq!(p.identities(), ["alice"]);

        let mut s = InMemoryKeyProvider::with_shared_key(KeyProviderOptions::element_call(), &[9; 32]);
        assert_eq!(s.get_shared_key(0), Some(vec![9; 32]));
        s.set_shared_key(1, &[8; 32]);
        assert_eq!(s.latest_key_index(), Some(1));
        assert!(s.ratchet_shared_key(1).is_some_and(|k| k != vec![8; 32]));
        assert!(s.options().shared_key);
    }

    #[test]
    fn pbkdf2_derivation_differs_from_hkdf() {
        let pb = KeyProviderOptions::default();
        let hk = KeyProviderOptions::element_call();
        // One PBKDF2 run only: 100 000 iterations are slow in debug builds.
        let a = derive_frame_key(b"passphrase", &pb);
        assert_ne!(a, derive_frame_key(b"passphrase", &hk));
        assert_ne!(a, [0; 16]);
    }

    #[test]
    fn core_key_events_land_under_the_livekit_identity() {
        let participant = Participant {
            user_id: UserId::from("@alice:example.com"),
            device_id: DeviceId::from("DEVICE123"),
            member_id: "memberABC".into(),
        };
        let ev = |key: &str| Event::EncryptionKey {
            group: GroupCallId::room_call(RoomId::from("!r:x")),
            participant: participant.clone(),
            local: false,
            index: 2,
            key: key.into(),
        };
        let mut p = InMemoryKeyProvider::new(KeyProviderOptions::element_call());
        let applied =
            apply_encryption_key(&mut p, &ev("AQIDBAUGBwgJCgsMDQ4PEA=="), IdentityScheme::Plain).unwrap();
        assert_eq!(applied.unwrap().identity.as_deref(), Some("@alice:example.com:DEVICE123"));
        assert_eq!(p.get_key("@alice:example.com:DEVICE123", 2), Some((1..=16).collect()));
        // The js-sdk test vector for the hashed identity.
        let applied =
            apply_encryption_key(&mut p, &ev("AQIDBAUGBwgJCgsMDQ4PEA"), IdentityScheme::Hashed).unwrap();
        assert_eq!(applied.unwrap().identity.as_deref(), Some("J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"));
        assert!(matches!(
            apply_encryption_key(&mut p, &ev("%%%"), IdentityScheme::Plain),
            Err(KeyError::NotBase64(_))
        ));
        let other = Event::GroupCallStateChanged {
            group: GroupCallId::room_call(RoomId::from("!r:x")),
            state: voip_core::GroupCallState::Joined,
        };
        assert!(apply_encryption_key(&mut p, &other, IdentityScheme::Plain).unwrap().is_none());
        let mut shared = InMemoryKeyProvider::with_shared_key(KeyProviderOptions::element_call(), &[0; 16]);
        let a = apply_encryption_key(&mut shared, &ev("AQIDBAUGBwgJCgsMDQ4PEA=="), IdentityScheme::Plain)
            .unwrap();
        assert_eq!(a.unwrap().identity, None);
        assert_eq!(shared.get_shared_key(2), Some((1..=16).collect()));
        assert_eq!(IdentityScheme::for_endpoint(TokenEndpoint::GetToken), IdentityScheme::Hashed);
        assert_eq!(IdentityScheme::for_dialect(MembershipDialect::Famedly), IdentityScheme::Plain);
    }
}
