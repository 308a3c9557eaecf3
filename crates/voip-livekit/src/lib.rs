//! LiveKit SFU mode for matrix-voip-rs: everything around the media except the media.
//!
//! In SFU mode the app's LiveKit SDK carries audio and video; this crate gives it what it needs
//! to connect and decrypt, without libwebrtc:
//!
//! * [`jwt`]: the client of a MatrixRTC JWT service (element-hq's lk-jwt-service protocol):
//!   `POST /get_token`, falling back to the legacy `POST /sfu/get` on 404, retrying without the
//!   delayed-leave fields on `M_BAD_JSON`, typed errors; returns [`LivekitCredentials`] (SFU
//!   `url`, `jwt`, and the LiveKit room and identity read from the JWT claims), and
//!   [`TokenKeeper`] refreshes them before they expire.
//! * [`discovery`]: which transport we publish on: the homeserver's `rtc/transports` (MSC4143,
//!   unstable prefix), the call's memberships, then the app's configuration.
//! * [`focus`]: where each member publishes (`oldest_membership`, `multi_sfu`, famedly's shared
//!   backend), and so which services we need tokens from.
//! * [`keys`]: the [`KeyProvider`] trait shaped like the LiveKit SDKs' key providers, an
//!   in-memory implementation with LiveKit's HKDF/PBKDF2 derivation and ratchet, and
//!   [`apply_encryption_key`], which installs the core's `Event::EncryptionKey` under the right
//!   LiveKit participant identity.
//!
//! With the `matrix` feature, [`matrix`] connects these to `voip-matrix` (OpenID tokens and
//! discovery through the app's matrix-sdk client). `docs/livekit.md` in the repository describes
//! the whole path and the mapping to the LiveKit Rust and JS SDKs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod discovery;
pub mod focus;
pub mod jwt;
pub mod keys;
#[cfg(feature = "matrix")]
pub mod matrix;

pub use discovery::{
    choose_own_transport, fetch_rtc_transports, parse_rtc_transports, DiscoveryError, LivekitFocus,
    OwnTransport, RtcTransport, TransportSource,
};
pub use focus::{member_transports, sfu_plan, MemberTransport, OwnMembership, SfuPlan};
pub use jwt::{
    decode_claims, DelayedLeave, JwtClaims, JwtError, JwtServiceClient, LivekitCredentials, OpenIdSource,
    OpenIdToken, TokenEndpoint, TokenKeeper, TokenRequest,
};
pub use keys::{
    apply_encryption_key, derive_frame_key, ratchet_key_material, AppliedKey, IdentityScheme,
    InMemoryKeyProvider, KeyDerivation, KeyError, KeyProvider, KeyProviderOptions,
};
