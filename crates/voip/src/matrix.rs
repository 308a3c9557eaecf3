//! matrix-sdk signalling: a [`Voip`] from an app's logged-in `Client`.

use voip_core::{LocalDevice, SendRequest};
use voip_matrix::{AdapterOptions, MatrixAdapter};

use crate::runtime::VoipBuilder;
use crate::transport::Transport;
use crate::{Voip, VoipError};

impl Transport for MatrixAdapter {
    fn submit(&self, request: SendRequest) {
        MatrixAdapter::submit(self, request);
    }
}

impl Voip {
    /// A builder for the device `client` is logged in as, signalling through matrix-sdk (Olm and
    /// Megolm included). Create it before the client's first sync so that it sees the initial
    /// room state; rooms known before are replayed when the runtime starts. The app keeps
    /// running its own sync loop.
    ///
    /// ```no_run
    /// # async fn run(client: matrix_sdk::Client) -> Result<(), voip::VoipError> {
    /// use voip::{CallType, Voip};
    /// let voip = Voip::from_client(&client)?.webrtc(voip::webrtc::WebrtcConfig::default()).build()?;
    /// let room = voip::core::RoomId::from("!dm:example.org");
    /// let call = voip.invite_to_call(&room, CallType::Video, "@bob:example.org").await?;
    /// call.wait_for_state(voip::CallState::Connected).await;
    /// call.hangup().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_client(client: &matrix_sdk::Client) -> Result<VoipBuilder, VoipError> {
        Self::from_client_with(client, AdapterOptions::default())
    }

    /// [`Voip::from_client`] with adapter options (retry policies, delivery mode, device
    /// collection strategy for Olm).
    pub fn from_client_with(
        client: &matrix_sdk::Client,
        options: AdapterOptions,
    ) -> Result<VoipBuilder, VoipError> {
        let user = client.user_id().ok_or(VoipError::NotLoggedIn)?;
        let device = client.device_id().ok_or(VoipError::NotLoggedIn)?;
        let local = LocalDevice::new(user.as_str(), device.as_str());
        let (adapter, inputs) = MatrixAdapter::with_options(client.clone(), options);
        let mut builder = VoipBuilder::new(local, adapter.clone(), inputs);
        builder.adapter = Some(adapter);
        Ok(builder)
    }
}

/// Replays the state of rooms the client already knows into the core (membership and
/// group-call memberships), in the background.
pub(crate) fn replay_known_rooms(adapter: &MatrixAdapter) {
    let a = adapter.clone();
    tokio::spawn(async move {
        for room in a.client().joined_rooms() {
            if let Err(e) = a.room_state_inputs(&room).await {
                tracing::warn!(room = %room.room_id(), "cannot replay room state: {e}");
            }
        }
    });
}

/// Keeps the homeserver's TURN servers in the engine's ICE servers (after the app's own),
/// refreshed before their TTL ends, and in the live calls' peer connections.
///
/// With the TURN REST API (Synapse's `turn_shared_secret`) the username carries its expiry.
/// Once it has passed, a TURN server refuses a new allocation signed with it; coturn 4.6.1
/// still refreshes an existing one (measured). So by default new credentials only go into the
/// live peer connections (`WebrtcEngine::set_turn_servers`): the call keeps its relay with no
/// gap, and its next ICE restart (network change, or the core's restart after an ICE failure,
/// which is also how a call recovers on a stricter TURN server that ends the allocation)
/// allocates with the fresh credentials.
///
/// With `WebrtcConfig::with_restart_on_turn_refresh` every call whose media goes through a
/// relay (`WebrtcEngine::relayed_calls`: relay-only, or a relay candidate selected) also
/// restarts ICE at each refresh, re-allocating its relay under the new credentials at the
/// price of an audio gap of about a second (measured). The restart is the core's
/// `Command::RestartIce`, as when the app asks for one: the core decides whether the call can
/// renegotiate now, queues the offer behind one in flight and signals it to the peer
/// (`m.call.negotiate`); this task only knows which calls use a relay, a media fact the core
/// has no view of. It holds the runtime weakly: it never keeps it running.
#[cfg(feature = "webrtc")]
pub(crate) fn keep_turn_fresh(
    adapter: &MatrixAdapter,
    engine: voip_webrtc::WebrtcEngine,
    runtime: crate::driver::WeakHandle,
) {
    let mut turn = adapter.watch_turn_servers();
    tokio::spawn(async move {
        let mut previous: Option<voip_matrix::TurnServers> = None;
        loop {
            let current = turn.borrow_and_update().clone();
            if let Some(t) = current {
                tracing::debug!(uris = ?t.uris, ttl = ?t.ttl, "TURN servers for new calls");
                let rotated = previous.as_ref().is_some_and(|p| {
                    p.username != t.username || p.password != t.password || p.uris != t.uris
                });
                // Added to the app's own servers (WebrtcConfig::with_ice_servers).
                engine.set_turn_servers(vec![voip_webrtc::IceServer {
                    urls: t.uris.clone(),
                    username: t.username.clone(),
                    credential: t.password.clone(),
                }]);
                previous = Some(t);
                if rotated && engine.restart_on_turn_refresh() {
                    restart_relayed_calls(&engine, &runtime).await;
                }
            }
            if turn.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Asks the core to restart ICE on every call whose media goes through a relay.
#[cfg(feature = "webrtc")]
async fn restart_relayed_calls(engine: &voip_webrtc::WebrtcEngine, runtime: &crate::driver::WeakHandle) {
    for call_id in engine.relayed_calls().await {
        let Some(handle) = runtime.upgrade() else { return };
        tracing::info!(%call_id, "TURN credentials refreshed: restarting ICE on the relayed call");
        if let Err(e) = handle.command(voip_core::Command::RestartIce { call_id: call_id.clone() }).await {
            // E.g. a call still ringing, or a peer without renegotiation: its allocation was
            // just made, or it cannot be helped.
            tracing::debug!(%call_id, "no ICE restart after the TURN refresh: {e}");
        }
    }
}
