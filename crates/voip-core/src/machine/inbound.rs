//! Homeserver input routing: sync batches, room events, to-device events (who may act:
//! encryption and sender checks), media-engine reports.

use super::*;

impl VoipMachine {
    pub(super) fn handle_media(&mut self, call_id: CallId, event: MediaEvent) -> Result<(), Error> {
        let mut ctx = ctx!(self);
        match self.calls.get_mut(&call_id) {
            Some(call) => {
                call.handle_media(&mut ctx, event);
                // Mesh: a peer call that just connected joins the group's screenshare.
                if let Some(g) = call.group.as_ref().and_then(|l| self.groups.get(&l.group)) {
                    if g.screenshare && call.state == CallState::Connected && !call.has_screenshare() {
                        let _ = call.cmd_screenshare(&mut ctx, true);
                    }
                }
                Ok(())
            }
            // Engines report late (candidates, state changes) after Close: not an error.
            None if self.memory.is_ended(&call_id) => Ok(()),
            None => Err(ApiMisuse::UnknownMediaCall { call_id }.into()),
        }
    }

    pub(super) fn handle_batch(&mut self, room_events: Vec<RoomEvent>, to_device: Vec<ToDeviceEvent>) {
        // Invites whose call is already answered, rejected or hung up in this same batch never
        // ring (fixes famedly's whole-batch drop: the filter is per call id).
        // Keyed by sender too: only the caller (hangup) or our own user (answered or rejected
        // on another device) can settle a call; a third user's hangup must not silence it.
        let call_id_of = |t: &str, c: &serde_json::Value| {
            matches!(t, types::ANSWER | types::HANGUP | types::REJECT)
                .then(|| c.get("call_id").and_then(|v| v.as_str()).map(str::to_owned))
                .flatten()
        };
        // Only events that may act at all count (cleartext ones where encryption is required
        // do not).
        let settled: BTreeSet<(String, UserId)> = room_events
            .iter()
            .filter(|e| self.room_event_authenticated(e))
            .map(|e| (e.event_type.as_str(), &e.content, &e.sender))
            .chain(
                to_device
                    .iter()
                    .filter(|e| self.to_device_sender(e).is_some())
                    .map(|e| (e.event_type.as_str(), &e.content, &e.sender)),
            )
            .filter_map(|(t, c, sender)| call_id_of(t, c).map(|id| (id, sender.clone())))
            .collect();
        for e in room_events {
            if let Err(err) = self.handle_room_event(e, &settled) {
                tracing::warn!(%err, "call event in sync batch ignored");
            }
        }
        for e in to_device {
            if let Err(err) = self.handle_to_device(e, &settled) {
                tracing::warn!(%err, "to-device call event in sync batch ignored");
            }
        }
    }

    pub(super) fn handle_room_event(
        &mut self,
        e: RoomEvent,
        settled: &BTreeSet<(String, UserId)>,
    ) -> Result<(), Error> {
        let mut e = e;
        e.event_type = wire::normalize_event_type(&e.event_type).into_owned();
        if e.event_type == group::RTC_NOTIFICATION || e.event_type == group::RTC_DECLINE {
            self.handle_rtc_notification(e);
            return Ok(());
        }
        if e.event_type == member::RTC_MEMBER_STICKY {
            // Sticky MatrixRTC membership (MSC4143), keyed by its sticky key; the member it
            // names must be the sender.
            let (Some(key), true) = (
                member::sticky_key(&e.content),
                member::sticky_user(&e.content).is_none_or(|u| u == e.sender.as_str()),
            ) else {
                self.counters.not_from_peer += 1;
                return Ok(());
            };
            let key = format!("{}|{key}", e.sender);
            return self.apply_membership(
                &e.room_id,
                &e.sender,
                &e.event_type,
                &key,
                &e.content,
                e.origin_server_ts,
            );
        }
        if crate::keys::is_key_event_type(&e.event_type) {
            // Element Call's legacy room-event keys are not used; in a call we take part in
            // without media encryption they are counted like to-device ones.
            let call_id = e.content.get("call_id").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
            let group = GroupCallId { room_id: e.room_id.clone(), call_id };
            if self.groups.get(&group).is_some_and(GroupCall::unencrypted_sfu) {
                self.counters.keys_in_unencrypted_calls += 1;
            }
            return Ok(());
        }
        if !wire::is_call_event_type(&e.event_type) {
            return Ok(());
        }
        if !self.room_event_authenticated(&e) {
            self.counters.unauthenticated += 1;
            tracing::warn!(sender = %e.sender, room = %e.room_id, "cleartext call event in an encrypted room refused");
            return Ok(());
        }
        let age = e.age_ms.unwrap_or_else(|| self.now.since(e.origin_server_ts));
        let source = Source {
            room_id: e.room_id,
            sender: &e.sender,
            device: e.sender_device.as_ref(),
            age_ms: Some(age),
            signalling: Signalling::Room,
        };
        Self::dispatch(self, &e.event_type, &e.content, source, settled)
    }

    /// Whether a room call event may be acted on: in a room with `m.room.encryption` it must
    /// have arrived Megolm-encrypted.
    pub(super) fn room_event_authenticated(&self, e: &RoomEvent) -> bool {
        e.encrypted || !self.encrypted_rooms.contains(&e.room_id)
    }

    /// The sending device of a to-device event as Olm vouches for it: `None` for a cleartext
    /// event (its `device_id` / `sender_device` claims are never believed).
    pub(super) fn to_device_sender<'e>(&self, e: &'e ToDeviceEvent) -> Option<&'e DeviceId> {
        e.sender_device.as_ref().filter(|_| e.encrypted)
    }

    pub(super) fn handle_to_device(
        &mut self,
        e: ToDeviceEvent,
        settled: &BTreeSet<(String, UserId)>,
    ) -> Result<(), Error> {
        if crate::keys::is_key_event_type(&e.event_type) {
            return self.handle_key_event(e);
        }
        let mut e = e;
        e.event_type = wire::normalize_event_type(&e.event_type).into_owned();
        if !wire::is_call_event_type(&e.event_type) {
            return Ok(());
        }
        // Only Olm proves who sent a to-device message: a cleartext one (or one whose device Olm
        // did not name) never creates, changes or ends a call.
        let Some(device) = self.to_device_sender(&e).cloned() else {
            self.counters.unauthenticated += 1;
            tracing::warn!(sender = %e.sender, r#type = %e.event_type, "unauthenticated to-device call event refused");
            return Ok(());
        };
        let room = e.content.get("room_id").and_then(|r| r.as_str()).filter(|r| !r.is_empty());
        let Some(room) = room else {
            self.counters.malformed += 1;
            return Err(WireError {
                event_type: e.event_type,
                field: "room_id".into(),
                kind: WireErrorKind::Missing,
            }
            .into());
        };
        let source = Source {
            room_id: RoomId::from(room),
            sender: &e.sender,
            device: Some(&device),
            age_ms: None,
            signalling: Signalling::ToDevice,
        };
        Self::dispatch(self, &e.event_type, &e.content, source, settled)
    }

    /// A media-key (or key request) to-device event: to the key manager of its group call.
    pub(super) fn handle_key_event(&mut self, e: ToDeviceEvent) -> Result<(), Error> {
        let group = crate::keys::key_event_group(&e.event_type, &e.content);
        let mut ctx = ctx!(self);
        let joined = group.and_then(|g| self.groups.get_mut(&g));
        if joined.as_ref().is_some_and(|g| g.unencrypted_sfu()) {
            // A call without media encryption: keys are not used (nor key requests answered).
            tracing::debug!(sender = %e.sender, "media key for an unencrypted call ignored");
            self.counters.keys_in_unencrypted_calls += 1;
            return Ok(());
        }
        let Some(keys) = joined.and_then(|g| g.keys.as_mut()) else {
            self.counters.not_for_us += 1;
            return Ok(());
        };
        match keys.handle_to_device(
            &mut ctx,
            &e.sender,
            e.sender_device.as_ref(),
            e.encrypted,
            &e.event_type,
            &e.content,
        ) {
            Ok(crate::keys::KeyDisposition::Ignored(why)) => {
                tracing::debug!(?why, sender = %e.sender, "media key ignored");
                self.counters.not_from_peer += 1;
                Ok(())
            }
            Ok(_) => {
                self.counters.applied += 1;
                Ok(())
            }
            Err(err) => {
                self.counters.malformed += 1;
                Err(err.into())
            }
        }
    }
}
