//! A call's negotiation: building the peer connection, offers and answers (the first local
//! description waits for the candidates gathered at once), remote descriptions and candidates,
//! hold, rollback.

use super::*;

/// After a local candidate, how long the first description waits for another one of the same
/// gathering burst before it is reported.
pub(super) const CANDIDATE_LULL: Duration = Duration::from_millis(2);

/// The call's first local description, applied but not yet reported: it waits for the
/// candidates gathered at once, so that its SDP carries them.
pub(super) struct PendingReport {
    pub(super) pc: Arc<dyn PeerConnection>,
    pub(super) fallback: RTCSessionDescription,
    pub(super) setup: Option<sdp::DtlsSetup>,
    /// When to report: `latest`, or sooner after a lull in a candidate burst.
    pub(super) report_at: tokio::time::Instant,
    pub(super) latest: tokio::time::Instant,
}

impl CallTask {
    pub(super) fn rtc_ice_servers(&self) -> Vec<RTCIceServer> {
        let servers = self.ice_servers.lock().map(|s| s.clone()).unwrap_or_default();
        servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect()
    }

    /// The peer connection's configuration: the engine's current ICE servers and the policy.
    fn rtc_configuration(&self) -> RTCConfiguration {
        RTCConfigurationBuilder::new()
            .with_ice_servers(self.rtc_ice_servers())
            .with_ice_transport_policy(match self.config.ice_transport_policy {
                crate::config::IceTransportPolicy::All => RTCIceTransportPolicy::All,
                crate::config::IceTransportPolicy::Relay => RTCIceTransportPolicy::Relay,
            })
            .build()
    }

    /// Whether an ICE restart gathers on new sockets (webrtc-rs's
    /// `discard_local_candidates_during_ice_restart`): yes when the call may use a TURN relay
    /// (relay-only, or a `turn:` server configured). A TURN REST username (Synapse's
    /// `turn_shared_secret`: `"<expiry>:<user>"`) changes at every refresh, and a TURN server
    /// refuses to refresh an allocation with another username than the one that created it
    /// (RFC 8656 §7.2: 441 Wrong Credentials, measured with coturn 4.6.1), so new credentials
    /// need a new allocation, which needs a new 5-tuple: on the old socket coturn would answer
    /// 437 Allocation Mismatch. webrtc-rs releases the old allocations before it rebinds.
    fn rebind_on_ice_restart(&self) -> bool {
        self.config.ice_transport_policy == crate::config::IceTransportPolicy::Relay
            || self.ice_servers.lock().is_ok_and(|s| {
                s.iter().flat_map(|s| &s.urls).any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
            })
    }

    /// Gives the live peer connection the engine's current ICE servers. webrtc-rs keeps them
    /// for the next gathering, which an ICE restart starts (`restart_ice` in
    /// [`CallTask::create_offer`]); with [`CallTask::rebind_on_ice_restart`] that gathering
    /// allocates a new relay with them.
    pub(super) async fn update_ice_servers(&mut self) {
        let Some(pc) = self.pc.clone() else { return };
        match pc.set_configuration(self.rtc_configuration()).await {
            Ok(()) => info!("ICE servers updated; used from the next ICE restart"),
            Err(e) => warn!(error = %e, "cannot update the peer connection's ICE servers"),
        }
    }

    pub(super) async fn build_pc(
        &self,
        mdns: MulticastDnsMode,
    ) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
        let c = &self.config;
        let mut media = RtcMediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?.with(
            rtc::interceptor::Slot::from(super::tracks::KEYFRAME_REQUEST_SLOT),
            super::tracks::KeyframeRequestForwarder::default(),
        );
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            .with_prflx_acceptance_min_wait(Some(c.prflx_wait))
            .with_relay_acceptance_min_wait(Some(c.relay_wait()))
            .with_ice_connection_attempts(Some(c.ice_check_interval), None)
            .with_ice_timeouts(c.ice_disconnected_timeout, c.ice_failed_timeout, c.ice_keepalive_interval)
            .with_include_loopback_candidate(c.include_loopback)
            .with_discard_local_candidates_during_ice_restart(self.rebind_on_ice_restart());
        if let Some(cap) = c.turn_refresh_cap {
            settings = settings.with_turn_allocation_refresh_interval_cap(cap);
        }
        let settings = settings.build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(self.rtc_configuration())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler { tx: self.pc_tx.clone() }))
            .with_runtime(self.runtime.clone())
            .with_udp_addrs(c.udp_addrs.clone())
            .build()
            .await?;
        Ok(Arc::new(pc))
    }

    pub(super) async fn create_peer(&mut self, call_type: CallType) {
        if self.pc.is_some() {
            warn!("CreatePeer for a call that already has a peer connection; ignored");
            return;
        }
        info!(?call_type, "creating peer connection");
        let mode = match self.config.mdns {
            MdnsMode::Disabled => MulticastDnsMode::Disabled,
            MdnsMode::QueryOnly => MulticastDnsMode::QueryOnly,
        };
        let mut result = self.build_pc(mode).await;
        if let (Err(e), MulticastDnsMode::QueryOnly) = (&result, mode) {
            warn!(error = %e, "peer connection with mDNS failed; retrying with mDNS disabled");
            result = self.build_pc(MulticastDnsMode::Disabled).await;
        }
        match result {
            Ok(pc) => {
                self.pc = Some(pc.clone());
                if let Ok(mut s) = self.shared.lock() {
                    s.pc = Some(pc);
                }
            }
            Err(e) => self.fail(MediaOperation::CreatePeer, e),
        }
    }

    pub(super) fn pc_or_fail(&self, operation: MediaOperation) -> Option<Arc<dyn PeerConnection>> {
        let pc = self.pc.clone();
        if pc.is_none() {
            self.fail(operation, "no peer connection (CreatePeer missing or failed)");
        }
        pc
    }

    /// Reports the applied local description, with its `a=setup:` lines set to `setup` if given.
    pub(super) async fn report_local_description_with(
        &mut self,
        pc: &Arc<dyn PeerConnection>,
        fallback: RTCSessionDescription,
        setup: Option<sdp::DtlsSetup>,
    ) {
        let mut applied = pc.local_description().await.unwrap_or(fallback);
        if let Some(sdp) = setup.and_then(|role| sdp::with_setup(&applied.sdp, role)) {
            debug!(role = ?setup, "answer keeps the established DTLS role");
            applied.sdp = sdp;
        }
        self.local_mid = sdp::first_mid(&applied.sdp);
        self.local_ufrag =
            applied.sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:").map(str::to_owned));
        let sdp_type = match applied.sdp_type {
            webrtc::peer_connection::RTCSdpType::Answer => SdpType::Answer,
            _ => SdpType::Offer,
        };
        // Held candidates the description already carries (`a=candidate:`) are not trickled.
        let fresh: Vec<Candidate> = {
            let in_sdp = sdp::candidates(&applied.sdp);
            if !in_sdp.is_empty() {
                debug!(candidates = in_sdp.len(), "local description carries candidates");
            }
            std::mem::take(&mut self.held_candidates)
                .into_iter()
                .filter(|c| !in_sdp.contains(c.candidate.trim()))
                .collect()
        };
        self.emit(MediaEvent::LocalDescription {
            description: SessionDescription { sdp_type, sdp: applied.sdp },
        });
        self.local_description_reported = true;
        for candidate in fresh {
            self.emit(MediaEvent::LocalCandidate { candidate });
        }
        if std::mem::take(&mut self.gathering_complete_held) {
            self.emit(MediaEvent::GatheringComplete);
        }
    }

    pub(super) async fn create_offer(&mut self, ice_restart: bool) {
        let Some(pc) = self.pc_or_fail(MediaOperation::CreateOffer) else { return };
        if ice_restart {
            info!("restarting ICE");
            if let Err(e) = pc.restart_ice().await {
                self.fail(MediaOperation::CreateOffer, e);
                return;
            }
        }
        let offer = match pc.create_offer(Some(RTCOfferOptions { ice_restart })).await {
            Ok(o) => o,
            Err(e) => return self.fail(MediaOperation::CreateOffer, e),
        };
        if let Err(e) = pc.set_local_description(offer.clone()).await {
            return self.fail(MediaOperation::CreateOffer, e);
        }
        self.report_or_wait(pc, offer, None).await;
    }

    /// Reports a local description now, or, for the call's first one, once the candidates
    /// gathered at once are in it (`WebrtcConfig::with_sdp_candidates_wait`).
    pub(super) async fn report_or_wait(
        &mut self,
        pc: Arc<dyn PeerConnection>,
        fallback: RTCSessionDescription,
        setup: Option<sdp::DtlsSetup>,
    ) {
        let wait = self.config.sdp_candidates_wait;
        if self.local_description_reported || wait.is_zero() || self.gathering_complete_held {
            return self.report_local_description_with(&pc, fallback, setup).await;
        }
        let latest = tokio::time::Instant::now() + wait;
        self.pending_report = Some(PendingReport { pc, fallback, setup, report_at: latest, latest });
    }

    pub(super) async fn finish_pending_report(&mut self) {
        if let Some(p) = self.pending_report.take() {
            self.report_local_description_with(&p.pc, p.fallback, p.setup).await;
        }
    }

    pub(super) async fn create_answer(&mut self) {
        let Some(pc) = self.pc_or_fail(MediaOperation::CreateAnswer) else { return };
        self.set_answer_directions(&pc).await;
        let answer = match pc.create_answer(None).await {
            Ok(a) => a,
            Err(e) => return self.fail(MediaOperation::CreateAnswer, e),
        };
        if let Err(e) = pc.set_local_description(answer.clone()).await {
            return self.fail(MediaOperation::CreateAnswer, e);
        }
        if self.dtls_setup.is_none() {
            self.dtls_setup = sdp::answer_setup(&answer.sdp);
        }
        // webrtc-rs 0.21.1 answers every offer with its configured answering role (`active`),
        // also a re-offer when we were the original offerer and so the DTLS server. The
        // association keeps its roles (RFC 8842 §5.5, RFC 9429 §5.3.2) and libwebrtc rejects a
        // flipped answer ("Failed to set SSL role for the transport"). webrtc-rs only reads the
        // roles of the first exchange (it starts its DTLS transport once) and refuses a local
        // answer other than the one it created, so the settled role is written into the answer
        // we send, not into the one we apply.
        let keep = self.dtls_setup;
        self.report_or_wait(pc, answer, keep).await;
        self.refresh_send_state().await;
    }

    pub(super) async fn rollback(&mut self) {
        let Some(pc) = self.pc.clone() else { return };
        match RTCSessionDescription::rollback(None) {
            Ok(rb) => {
                if let Err(e) = pc.set_local_description(rb).await {
                    warn!(error = %e, "rollback failed");
                }
            }
            Err(e) => warn!(error = %e, "rollback description"),
        }
    }

    pub(super) async fn set_remote(&mut self, description: SessionDescription) {
        let Some(pc) = self.pc_or_fail(MediaOperation::SetRemoteDescription) else { return };
        let announced = sdp::announced_tracks(&description.sdp);
        if let Some(fmtp) = sdp::opus_fmtp(&description.sdp) {
            for t in self.local_tracks.iter().filter(|t| t.kind == MediaKind::Audio) {
                t.gate.set_codec_parameters(&fmtp);
            }
            self.remote_opus_fmtp = Some(fmtp);
        }
        if description.sdp_type == SdpType::Offer {
            self.remote_offer = Some(description.sdp.clone());
        }
        let description_type = description.sdp_type;
        let remote_setup = sdp::answer_setup(&description.sdp);
        let parsed = match description.sdp_type {
            SdpType::Offer => RTCSessionDescription::offer(description.sdp),
            SdpType::Answer => RTCSessionDescription::answer(description.sdp),
        };
        let desc = match parsed {
            Ok(d) => d,
            Err(e) => return self.fail(MediaOperation::SetRemoteDescription, e),
        };
        if let Err(e) = pc.set_remote_description(desc).await {
            return self.fail(MediaOperation::SetRemoteDescription, e);
        }
        self.remote_description_set = true;
        if description_type == SdpType::Answer && self.dtls_setup.is_none() {
            // The remote answered our offer: we take the other end of its role.
            self.dtls_setup = remote_setup.map(sdp::DtlsSetup::opposite);
        }
        let pending = std::mem::take(&mut self.pending_remote_candidates);
        if !pending.is_empty() {
            self.add_remote_candidates(pending).await;
        }
        // Tracks the remote no longer announces have ended (screenshare off, track removed).
        let gone: Vec<_> = self.reported_remote.iter().filter(|t| !announced.contains(t)).cloned().collect();
        for (stream_id, kind) in gone {
            self.remote_track_ended(&stream_id, kind, None);
        }
        if description.sdp_type == SdpType::Answer {
            self.refresh_send_state().await;
        }
    }

    pub(super) async fn add_remote_candidates(&mut self, candidates: Vec<Candidate>) {
        let Some(pc) = self.pc.clone() else { return };
        for c in candidates {
            if c.is_end_of_candidates() {
                debug!("remote end-of-candidates");
                continue;
            }
            let init = RTCIceCandidateInit {
                candidate: c.candidate.clone(),
                sdp_mid: c.sdp_mid.clone(),
                sdp_mline_index: c.sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
                username_fragment: c.username_fragment.clone(),
                url: None,
            };
            // One unusable candidate (mDNS with mDNS off, TCP, a stale generation) must not end
            // the call: log it, as libwebrtc-based clients do.
            if let Err(e) = pc.add_ice_candidate(init).await {
                warn!(candidate = %c.candidate, error = %e, "remote candidate rejected");
            }
        }
    }

    pub(super) async fn set_hold(&mut self, on_hold: bool) {
        self.held = on_hold;
        for t in &self.local_tracks {
            t.gate.held.store(on_hold, Ordering::SeqCst);
        }
        if let Ok(mut s) = self.shared.lock() {
            s.on_hold = on_hold;
        }
        let Some(pc) = self.pc.clone() else { return };
        for tr in pc.get_transceivers().await {
            let has_track = tr
                .sender()
                .await
                .ok()
                .flatten()
                .is_some_and(|s| self.local_tracks.iter().any(|t| t.sender.id() == s.id()));
            let direction = match (on_hold, has_track) {
                (true, true) => RTCRtpTransceiverDirection::Sendonly,
                (true, false) => RTCRtpTransceiverDirection::Inactive,
                (false, true) => RTCRtpTransceiverDirection::Sendrecv,
                (false, false) => RTCRtpTransceiverDirection::Recvonly,
            };
            if let Err(e) = tr.set_direction(direction).await {
                warn!(error = %e, ?direction, "set_direction failed");
            }
        }
        info!(on_hold, "hold changed");
    }

    /// webrtc-rs 0.21.1 answers a `sendonly` offer with `sendrecv` (it copies the transceiver's
    /// direction instead of intersecting it with the offer, RFC 9429 §5.3.1). Before answering,
    /// set every transceiver to what JSEP would answer: what we want (send if we have a track and
    /// do not hold; always receive) intersected with the reverse of the offered direction.
    pub(super) async fn set_answer_directions(&self, pc: &Arc<dyn PeerConnection>) {
        let Some(offer) = self.remote_offer.as_deref() else { return };
        let offered: HashMap<String, String> = sdp::media_sections(offer)
            .into_iter()
            .filter_map(|s| Some((s.mid?, s.direction.unwrap_or_else(|| "sendrecv".to_owned()))))
            .collect();
        for tr in pc.get_transceivers().await {
            let Ok(Some(mid)) = tr.mid().await else { continue };
            let Some(remote) = offered.get(&mid) else { continue };
            let has_track = match tr.sender().await {
                Ok(Some(s)) => self.local_tracks.iter().any(|t| t.sender.id() == s.id()),
                _ => false,
            };
            let (remote_sends, remote_receives) = match remote.as_str() {
                "sendonly" => (true, false),
                "recvonly" => (false, true),
                "inactive" => (false, false),
                _ => (true, true),
            };
            let send = has_track && remote_receives;
            let direction = match (send, remote_sends) {
                (true, true) if self.held => RTCRtpTransceiverDirection::Sendonly,
                (true, true) => RTCRtpTransceiverDirection::Sendrecv,
                (true, false) => RTCRtpTransceiverDirection::Sendonly,
                (false, true) => RTCRtpTransceiverDirection::Recvonly,
                (false, false) => RTCRtpTransceiverDirection::Inactive,
            };
            if tr.direction().await.ok() != Some(direction) {
                debug!(%mid, ?direction, offered = %remote, "answer direction");
                if let Err(e) = tr.set_direction(direction).await {
                    warn!(error = %e, %mid, "set_direction before answer failed");
                }
            }
        }
    }
}
