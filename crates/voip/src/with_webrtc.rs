//! Real media on webrtc-rs.

use std::sync::Arc;

use voip_webrtc::{WebrtcConfig, WebrtcEngine};

use crate::runtime::VoipBuilder;

impl VoipBuilder {
    /// Media on webrtc-rs with `config` (ICE servers, loopback-only gathering, sources and
    /// sinks). With matrix signalling, the homeserver's TURN servers are added and refreshed
    /// before their TTL ends. The engine is reachable afterwards through `Voip::webrtc` (tracks,
    /// stats).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the engine spawns its tasks on the current one).
    pub fn webrtc(self, config: WebrtcConfig) -> Self {
        let (engine, events) = WebrtcEngine::with_channel(config);
        let mut builder = self.media_engine(Arc::new(engine.clone()), events);
        builder.webrtc = Some(engine);
        builder
    }
}
