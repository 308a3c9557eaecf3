//! Test rig for matrix-voip-rs: a real Synapse homeserver and matrix-sdk client helpers.
//!
//! * [`synapse()`] returns the homeserver for this test process: the shared instance named by
//!   `SYNAPSE_URL` + `SYNAPSE_REG_SECRET` when set (see the `synapse-rig` binary), otherwise one
//!   started on first use (installed into a cached virtualenv when missing) and stopped when the
//!   process exits.
//! * `register_user` creates a user through the shared-secret admin API; `login` builds a
//!   logged-in `matrix_sdk::Client` with its own in-memory stores (a new device per call).
//! * `Syncing` runs a client's sync loop in the background for the duration of a test.
//!
//! * [`tight_synapse()`] is a second instance with tight rate limits ([`rig::Limits::Tight`]),
//!   always started by this process on first use (also when `SYNAPSE_URL` is set), and
//!   [`rig::Instance`] an instance a test controls fully (stop, kill, restart on the same data
//!   and port). `register_user_on(&hs, ..)` registers users there; `login` follows the user's
//!   homeserver.
//!
//! The client helpers need the default feature `client`; without it the crate is only the rig ([`rig`],
//! [`synapse()`]), which builds without matrix-sdk.
//!
//! See `README.md` in this crate for the commands.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![recursion_limit = "256"]

pub mod coturn;
#[cfg(feature = "jwt-service")]
pub mod jwt_service;
pub mod rig;

use std::sync::OnceLock;

use anyhow::{Context, Result};

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
pub use client::*;

/// A running homeserver.
#[derive(Clone, Debug)]
pub struct Synapse {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// `registration_shared_secret`, for `register_user`.
    pub reg_secret: String,
    /// The server name (`localhost`), the domain of every user id.
    pub server_name: String,
    /// Whether this process started it (otherwise it is a shared instance from the environment).
    pub owned: bool,
}

impl Synapse {
    /// The description of a running [`rig::Instance`] (owned by this process).
    pub fn of(instance: &rig::Instance) -> Synapse {
        Synapse {
            url: instance.url().to_owned(),
            reg_secret: instance.reg_secret().to_owned(),
            server_name: "localhost".into(),
            owned: true,
        }
    }
}

static SYNAPSE: OnceLock<std::result::Result<Synapse, String>> = OnceLock::new();

/// The homeserver for this test process (blocking on first call; panics when none can be had).
///
/// With `SYNAPSE_URL` (and `SYNAPSE_REG_SECRET`) set, that instance is used. Otherwise Synapse is
/// installed if needed and started once for this process, with data under `/dev/shm` when
/// available, and a watchdog stops it (and deletes its data) when the process exits.
pub fn synapse() -> &'static Synapse {
    match SYNAPSE.get_or_init(|| init().map_err(|e| format!("{e:#}"))) {
        Ok(s) => s,
        Err(e) => panic!("voip-testkit: no Synapse available: {e}"),
    }
}

fn init() -> Result<Synapse> {
    if let Ok(url) = std::env::var("SYNAPSE_URL") {
        let reg_secret = std::env::var("SYNAPSE_REG_SECRET")
            .context("SYNAPSE_URL is set but SYNAPSE_REG_SECRET is not")?;
        return Ok(Synapse {
            url: url.trim_end_matches('/').to_owned(),
            reg_secret,
            server_name: "localhost".into(),
            owned: false,
        });
    }
    let started = rig::start(&rig::StartOptions::owned_by_this_process())?;
    eprintln!(
        "voip-testkit: Synapse {} at {} (pid {}, data {}, ready in {:.1} s)",
        rig::SYNAPSE_VERSION,
        started.url,
        started.pid,
        started.data_dir.display(),
        started.startup.as_secs_f64()
    );
    Ok(Synapse {
        url: started.url,
        reg_secret: started.reg_secret,
        server_name: "localhost".into(),
        owned: true,
    })
}

static TIGHT: OnceLock<std::result::Result<(rig::Instance, Synapse), String>> = OnceLock::new();

/// A second homeserver for this test process, with tight rate limits ([`rig::Limits::Tight`]):
/// started on first use (blocking; panics when it cannot be), whatever `SYNAPSE_URL` says, with
/// its own data dir and port, and stopped with its data deleted when the process exits.
pub fn tight_synapse() -> &'static Synapse {
    let init = || {
        rig::Instance::start(rig::Limits::Tight).map(|i| {
            let s = Synapse::of(&i);
            (i, s)
        })
    };
    match TIGHT.get_or_init(|| init().map_err(|e| format!("{e:#}"))) {
        Ok((_, s)) => s,
        Err(e) => panic!("voip-testkit: no rate-limited Synapse available: {e}"),
    }
}
