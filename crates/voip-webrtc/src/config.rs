//! Adapter configuration: ICE servers, bind addresses and the webrtc-rs settings that make it
//! interoperate with libwebrtc (see `shared/reference/webrtc-rs-interop.md`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::media::sink::MediaSink;
use crate::media::source::{bundled_media, SourceFactory};
use crate::runtime::NetworkSwitch;

/// One STUN/TURN server for the peer connections (`RTCIceServer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URIs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(default)]
    pub username: String,
    /// TURN password.
    #[serde(default)]
    pub credential: String,
}

/// The homeserver's `GET /_matrix/client/v3/voip/turnServer` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnServerResponse {
    /// TURN URIs.
    #[serde(default)]
    pub uris: Vec<String>,
    /// Username.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// Validity in seconds; the app refetches before it runs out.
    #[serde(default)]
    pub ttl: u64,
}

impl IceServer {
    /// A TURN (or STUN) server from the fields of a `/voip/turnServer` response, e.g. from
    /// voip-matrix's `TurnServers`: `IceServer::turn(t.uris.clone(), &t.username, &t.password)`.
    pub fn turn(uris: Vec<String>, username: impl Into<String>, password: impl Into<String>) -> Self {
        IceServer { urls: uris, username: username.into(), credential: password.into() }
    }
}

impl From<&TurnServerResponse> for IceServer {
    fn from(t: &TurnServerResponse) -> Self {
        IceServer::turn(t.uris.clone(), &t.username, &t.password)
    }
}

impl From<TurnServerResponse> for IceServer {
    fn from(t: TurnServerResponse) -> Self {
        IceServer { urls: t.uris, username: t.username, credential: t.password }
    }
}

/// How the engine deals with mDNS (`.local`) candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MdnsMode {
    /// Never touch multicast DNS; remote `.local` candidates are ignored.
    Disabled,
    /// Resolve remote `.local` candidates; never publish our own. If the multicast socket
    /// cannot be opened (no multicast route), the peer connection is built with mDNS disabled
    /// instead of failing the call.
    #[default]
    QueryOnly,
}

/// Which local candidates ICE may use (`RTCIceTransportPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IceTransportPolicy {
    /// Host, server-reflexive and relay candidates.
    #[default]
    All,
    /// Relay candidates only: media always goes through a TURN server (matrix-js-sdk's
    /// `forceTURN`), so the peer never learns this device's addresses.
    Relay,
}

/// webrtc-rs's default wait before the controlling side nominates a relayed pair.
const DEFAULT_RELAY_WAIT: Duration = Duration::from_millis(2000);

/// Configuration of a [`crate::WebrtcEngine`]. Start from [`WebrtcConfig::default`] (all
/// interfaces) or [`WebrtcConfig::loopback`] (tests), then use the `with_*` setters.
#[derive(Clone)]
pub struct WebrtcConfig {
    pub(crate) ice_servers: Vec<IceServer>,
    pub(crate) ice_transport_policy: IceTransportPolicy,
    pub(crate) udp_addrs: Vec<String>,
    pub(crate) include_loopback: bool,
    pub(crate) mdns: MdnsMode,
    pub(crate) ice_check_interval: Duration,
    pub(crate) prflx_wait: Duration,
    pub(crate) relay_wait: Duration,
    pub(crate) sdp_candidates_wait: Duration,
    pub(crate) ice_disconnected_timeout: Option<Duration>,
    pub(crate) ice_failed_timeout: Option<Duration>,
    pub(crate) ice_keepalive_interval: Option<Duration>,
    pub(crate) sources: Arc<dyn SourceFactory>,
    pub(crate) sink: Option<Arc<dyn MediaSink>>,
    pub(crate) network: NetworkSwitch,
    pub(crate) refresh_live_calls: bool,
    pub(crate) restart_on_turn_refresh: bool,
    pub(crate) turn_refresh_cap: Option<Duration>,
    #[cfg(feature = "codecs")]
    pub(crate) audio: Option<crate::media::audio::AudioHub>,
    #[cfg(feature = "codecs")]
    pub(crate) video: Option<crate::media::video::VideoHub>,
}

impl fmt::Debug for WebrtcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebrtcConfig")
            .field("ice_servers", &self.ice_servers.len())
            .field("ice_transport_policy", &self.ice_transport_policy)
            .field("udp_addrs", &self.udp_addrs)
            .field("include_loopback", &self.include_loopback)
            .field("mdns", &self.mdns)
            .field("ice_check_interval", &self.ice_check_interval)
            .field("prflx_wait", &self.prflx_wait)
            .field("relay_wait", &self.relay_wait)
            .field("sdp_candidates_wait", &self.sdp_candidates_wait)
            .field("ice_disconnected_timeout", &self.ice_disconnected_timeout)
            .field("ice_failed_timeout", &self.ice_failed_timeout)
            .field("app_sink", &self.sink.is_some())
            .field("refresh_live_calls", &self.refresh_live_calls)
            .field("restart_on_turn_refresh", &self.restart_on_turn_refresh)
            .field("turn_refresh_cap", &self.turn_refresh_cap)
            .finish_non_exhaustive()
    }
}

impl Default for WebrtcConfig {
    /// Production defaults: bind every interface (`0.0.0.0:0`, loopback skipped), mDNS
    /// query-only and non-fatal, ICE checks every 50 ms, no peer-reflexive nomination wait,
    /// host candidates in the first offer or answer (up to 30 ms of waiting), webrtc-rs's ICE
    /// timeouts, bundled test media as the source.
    fn default() -> Self {
        WebrtcConfig {
            ice_servers: Vec::new(),
            ice_transport_policy: IceTransportPolicy::All,
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            include_loopback: false,
            mdns: MdnsMode::QueryOnly,
            ice_check_interval: Duration::from_millis(50),
            prflx_wait: Duration::ZERO,
            relay_wait: DEFAULT_RELAY_WAIT,
            sdp_candidates_wait: Duration::from_millis(30),
            ice_disconnected_timeout: None,
            ice_failed_timeout: None,
            ice_keepalive_interval: None,
            sources: bundled_media(),
            sink: None,
            network: NetworkSwitch::new(),
            refresh_live_calls: true,
            restart_on_turn_refresh: false,
            turn_refresh_cap: None,
            #[cfg(feature = "codecs")]
            audio: None,
            #[cfg(feature = "codecs")]
            video: None,
        }
    }
}

impl WebrtcConfig {
    /// Loopback only: bind `127.0.0.1:0`, gather the 127.0.0.1 host candidate, mDNS off.
    /// For tests and same-machine demos (RFC 8445 forbids loopback candidates on real networks).
    pub fn loopback() -> Self {
        WebrtcConfig {
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            include_loopback: true,
            mdns: MdnsMode::Disabled,
            ..WebrtcConfig::default()
        }
    }

    /// The app's STUN/TURN servers for new peer connections. With matrix signalling the
    /// homeserver's TURN servers (`/voip/turnServer`) are added to these, not put in their place.
    #[must_use]
    pub fn with_ice_servers(mut self, servers: Vec<IceServer>) -> Self {
        self.ice_servers = servers;
        self
    }

    /// The app's STUN/TURN servers (see [`WebrtcConfig::with_ice_servers`]).
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// Which candidates ICE may use; [`IceTransportPolicy::Relay`] for relay-only calls.
    #[must_use]
    pub fn with_ice_transport_policy(mut self, policy: IceTransportPolicy) -> Self {
        self.ice_transport_policy = policy;
        self
    }

    /// Relay only (`true`) or every candidate type (`false`, the default); matrix-js-sdk's
    /// `forceTURN`.
    #[must_use]
    pub fn with_relay_only(self, relay_only: bool) -> Self {
        let policy = if relay_only { IceTransportPolicy::Relay } else { IceTransportPolicy::All };
        self.with_ice_transport_policy(policy)
    }

    /// The configured [`IceTransportPolicy`].
    pub fn ice_transport_policy(&self) -> IceTransportPolicy {
        self.ice_transport_policy
    }

    /// Local UDP addresses to bind (`ip:port`; a wildcard means every non-loopback interface).
    #[must_use]
    pub fn with_udp_addrs(mut self, addrs: Vec<String>) -> Self {
        self.udp_addrs = addrs;
        self
    }

    /// mDNS handling.
    #[must_use]
    pub fn with_mdns(mut self, mode: MdnsMode) -> Self {
        self.mdns = mode;
        self
    }

    /// Interval between ICE connectivity checks (webrtc-rs default 200 ms; ours 50 ms).
    #[must_use]
    pub fn with_ice_check_interval(mut self, interval: Duration) -> Self {
        self.ice_check_interval = interval;
        self
    }

    /// How long the controlling side waits before nominating a peer-reflexive pair
    /// (webrtc-rs default 1 s; ours 0, since Matrix candidates arrive late through the server).
    #[must_use]
    pub fn with_prflx_wait(mut self, wait: Duration) -> Self {
        self.prflx_wait = wait;
        self
    }

    /// How long the controlling side waits before nominating a relayed pair, giving a direct
    /// pair the chance to succeed first (webrtc-rs's default, 2 s). With
    /// [`IceTransportPolicy::Relay`] there is nothing better to wait for and the wait is 0
    /// whatever this says: measured in the interop harness, a relay-only call the Rust side
    /// placed spent exactly these 2 s between its first successful check and nomination.
    #[must_use]
    pub fn with_relay_wait(mut self, wait: Duration) -> Self {
        self.relay_wait = wait;
        self
    }

    /// Whether new ICE servers ([`crate::WebrtcEngine::set_ice_servers`], e.g. TURN
    /// credentials refreshed before their TTL ends) also go into the peer connections of live
    /// calls, where the next ICE restart uses them (default: yes). `false` leaves live calls on
    /// the servers they were built with, as before this existed: once a relayed call outlives
    /// its credentials' TTL, an ICE restart (network change, failure) cannot allocate a new
    /// relay (the TURN server refuses the expired REST username) and the call loses its media
    /// (measured with coturn 4.6.1: 0 packets after such a restart). With `false`,
    /// [`WebrtcConfig::with_restart_on_turn_refresh`] does nothing either. For tests that show
    /// that happening.
    #[must_use]
    pub fn with_live_ice_server_updates(mut self, enabled: bool) -> Self {
        self.refresh_live_calls = enabled;
        self
    }

    /// Whether live calls get new ICE servers ([`WebrtcConfig::with_live_ice_server_updates`]).
    pub fn live_ice_server_updates(&self) -> bool {
        self.refresh_live_calls
    }

    /// Whether `voip` restarts ICE on every relayed call ([`crate::WebrtcEngine::relayed_calls`])
    /// as soon as the homeserver's TURN credentials are refreshed, so that each relay is
    /// re-allocated under the new credentials before the old ones expire (default: no; needs
    /// [`WebrtcConfig::with_live_ice_server_updates`]).
    ///
    /// The trade-off, measured (docs/benchmarks.md, "TURN credential refresh during a call"):
    /// each such restart costs an audio gap of about a second (0.62–1.04 s measured, rebinding
    /// plus a renegotiation through the homeserver), one per refresh, i.e. every ≈ 48 min at
    /// Synapse's default 1 h TTL. Without it (the default) a refresh only goes into the live
    /// peer connections and costs no gap (longest 45–92 ms over the whole call): coturn keeps
    /// refreshing an existing allocation under its expired REST username, and the next ICE
    /// restart (network change, ICE failure) allocates with the fresh credentials. Turn it on for a TURN server that ends an
    /// allocation once its username expired; without it such a call's ICE would go
    /// disconnected/failed there, and the core's ICE-failure restart would recover it with the
    /// fresh credentials (not measured: no such server in the tests).
    #[must_use]
    pub fn with_restart_on_turn_refresh(mut self, enabled: bool) -> Self {
        self.restart_on_turn_refresh = enabled;
        self
    }

    /// Whether relayed calls restart ICE at each TURN refresh
    /// ([`WebrtcConfig::with_restart_on_turn_refresh`]).
    pub fn restart_on_turn_refresh(&self) -> bool {
        self.restart_on_turn_refresh
    }

    /// At most this long between two Refresh requests of a TURN allocation (webrtc-rs's
    /// `with_turn_allocation_refresh_interval_cap`; default: none, half the lifetime the server
    /// grants, 300 s with coturn's 600 s minimum). Keeps an idle NAT mapping to the TURN server
    /// open; tests use it to see allocations refreshed within seconds (values under 1 s count
    /// as 1 s).
    #[must_use]
    pub fn with_turn_refresh_interval_cap(mut self, cap: Option<Duration>) -> Self {
        self.turn_refresh_cap = cap;
        self
    }

    /// The relay nomination wait in effect ([`WebrtcConfig::with_relay_wait`]; 0 when
    /// relay-only).
    pub fn relay_wait(&self) -> Duration {
        match self.ice_transport_policy {
            IceTransportPolicy::Relay => Duration::ZERO,
            _ => self.relay_wait,
        }
    }

    /// How long a call's first offer or answer may wait for the local candidates gathered at
    /// once (host candidates: usually within a few milliseconds) so that it carries them in
    /// its SDP; later candidates (server-reflexive, relay) trickle as `m.call.candidates`.
    /// Over Matrix this takes one event off the set-up's critical path: the peer can start
    /// ICE checks as soon as it has the invite or answer, and its own invite or answer does
    /// not queue behind our candidates in the homeserver. The description is reported as soon
    /// as gathering completes or 2 ms pass without a new candidate, at most after `wait`.
    /// `Duration::ZERO`: report at once and trickle every candidate. Default 30 ms.
    #[must_use]
    pub fn with_sdp_candidates_wait(mut self, wait: Duration) -> Self {
        self.sdp_candidates_wait = wait;
        self
    }

    /// ICE timeouts: no traffic for `disconnected` → disconnected; `failed` more → failed;
    /// keepalives every `keepalive`. `None` keeps webrtc-rs's defaults (5 s, 25 s, 2 s).
    #[must_use]
    pub fn with_ice_timeouts(
        mut self,
        disconnected: Option<Duration>,
        failed: Option<Duration>,
        keepalive: Option<Duration>,
    ) -> Self {
        self.ice_disconnected_timeout = disconnected;
        self.ice_failed_timeout = failed;
        self.ice_keepalive_interval = keepalive;
        self
    }

    /// Where local tracks get their frames (default: the bundled clips).
    #[must_use]
    pub fn with_sources(mut self, sources: Arc<dyn SourceFactory>) -> Self {
        self.sources = sources;
        self
    }

    /// An app sink that sees every packet of every remote track (in addition to the engine's
    /// own counting sinks).
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn MediaSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Decoded audio (feature `codecs`): local audio tracks send the call's
    /// [`crate::media::audio::AudioInput`] encoded with libopus, every remote audio track is
    /// jitter-buffered and decoded for [`crate::media::audio::AudioHub::remote_audio`]. Video
    /// tracks take their frames from the hub's video factory. Other sinks still get packets.
    #[cfg(feature = "codecs")]
    #[must_use]
    pub fn with_audio(mut self, hub: crate::media::audio::AudioHub) -> Self {
        self.audio = Some(hub);
        self
    }

    /// The decoded-audio hub, if configured.
    #[cfg(feature = "codecs")]
    pub fn audio(&self) -> Option<&crate::media::audio::AudioHub> {
        self.audio.as_ref()
    }

    /// Decoded video (feature `codecs`): local video tracks send the call's
    /// [`crate::media::video::VideoInput`] encoded with libvpx (and answer the peer's PLI/FIR
    /// with a keyframe), every remote video track is reassembled, decoded and handed out by
    /// [`crate::media::video::VideoHub::remote_video`], with keyframe requests on start and after
    /// loss. Audio tracks are not affected (see [`WebrtcConfig::with_audio`]).
    #[cfg(feature = "codecs")]
    #[must_use]
    pub fn with_video(mut self, hub: crate::media::video::VideoHub) -> Self {
        self.video = Some(hub);
        self
    }

    /// The decoded-video hub, if configured.
    #[cfg(feature = "codecs")]
    pub fn video(&self) -> Option<&crate::media::video::VideoHub> {
        self.video.as_ref()
    }

    /// Where local tracks of `kind` get their frames: the video hub (video) or the audio hub
    /// (audio, and video without a video hub) when configured, else the sources.
    pub(crate) fn source_factory(&self, kind: voip_core::media::MediaKind) -> &dyn SourceFactory {
        #[cfg(feature = "codecs")]
        if let (voip_core::media::MediaKind::Video, Some(hub)) = (kind, &self.video) {
            return hub;
        }
        #[cfg(feature = "codecs")]
        if let Some(hub) = &self.audio {
            return hub;
        }
        let _ = kind;
        self.sources.as_ref()
    }

    /// The app's sinks: its own and the audio and video hubs.
    pub(crate) fn app_sinks(&self) -> Vec<Arc<dyn MediaSink>> {
        #[allow(unused_mut)]
        let mut sinks: Vec<Arc<dyn MediaSink>> = self.sink.iter().cloned().collect();
        #[cfg(feature = "codecs")]
        if let Some(hub) = &self.audio {
            sinks.push(Arc::new(hub.clone()));
        }
        #[cfg(feature = "codecs")]
        if let Some(hub) = &self.video {
            sinks.push(Arc::new(hub.clone()));
        }
        sinks
    }

    /// Share a [`NetworkSwitch`] to black-hole this engine's traffic on demand.
    #[must_use]
    pub fn with_network_switch(mut self, switch: NetworkSwitch) -> Self {
        self.network = switch;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_server_response_becomes_ice_server() {
        let json = r#"{"uris":["turn:turn.example.org?transport=udp"],"username":"1443779631:@user:example.org",
            "password":"JlKfBy1QwLrO20385QyAtEyIv0=","ttl":86400}"#;
        let t: TurnServerResponse = serde_json::from_str(json).unwrap();
        let s = IceServer::from(t);
        assert_eq!(s.urls, vec!["turn:turn.example.org?transport=udp".to_owned()]);
        assert_eq!(s.username, "1443779631:@user:example.org");
        assert_eq!(s.credential, "JlKfBy1QwLrO20385QyAtEyIv0=");
    }

    #[test]
    fn relay_only_sets_the_transport_policy() {
        assert_eq!(WebrtcConfig::default().ice_transport_policy(), IceTransportPolicy::All);
        assert_eq!(WebrtcConfig::default().relay_wait(), DEFAULT_RELAY_WAIT);
        assert_eq!(WebrtcConfig::default().with_relay_only(true).relay_wait(), Duration::ZERO);
        let c = WebrtcConfig::loopback().with_relay_only(true);
        assert_eq!(c.ice_transport_policy(), IceTransportPolicy::Relay);
        assert_eq!(c.with_relay_only(false).ice_transport_policy(), IceTransportPolicy::All);
    }

    #[test]
    fn turn_refresh_updates_live_calls_without_restarting_them_by_default() {
        let c = WebrtcConfig::default();
        assert!(c.live_ice_server_updates());
        assert!(!c.restart_on_turn_refresh());
        let c = c.with_restart_on_turn_refresh(true);
        assert!(c.restart_on_turn_refresh() && c.live_ice_server_updates());
        assert!(!c.with_restart_on_turn_refresh(false).restart_on_turn_refresh());
    }

    #[test]
    fn loopback_binds_127_0_0_1_without_mdns() {
        let c = WebrtcConfig::loopback();
        assert_eq!(c.udp_addrs, vec!["127.0.0.1:0".to_owned()]);
        assert_eq!(c.mdns, MdnsMode::Disabled);
        assert_eq!(WebrtcConfig::default().prflx_wait, Duration::ZERO);
    }
}
