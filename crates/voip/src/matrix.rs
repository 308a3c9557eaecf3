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
/// refreshed before their TTL ends.
#[cfg(feature = "webrtc")]
pub(crate) fn keep_turn_fresh(adapter: &MatrixAdapter, engine: voip_webrtc::WebrtcEngine) {
    {
        let mut turn = adapter.watch_turn_servers();
        tokio::spawn(async move {
            loop {
                let current = turn.borrow_and_update().clone();
                if let Some(t) = current {
                    tracing::debug!(uris = ?t.uris, ttl = ?t.ttl, "TURN servers for new calls");
                    // Added to the app's own servers (WebrtcConfig::with_ice_servers).
                    engine.set_turn_servers(vec![voip_webrtc::IceServer {
                        urls: t.uris,
                        username: t.username,
                        credential: t.password,
                    }]);
                }
                if turn.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}
