//! Sending a call's events (`m.call.*`, room or to-device) and what a send that gave up
//! means for the call.

use super::*;

impl Call {
    /// Sends one call event to the peer, as a room event or a to-device message.
    pub(super) fn send(&mut self, ctx: &mut Ctx<'_>, event: CallEvent, purpose: SendPurpose) {
        let to_device = match self.signalling {
            Signalling::Room => ToDeviceFields::default(),
            Signalling::ToDevice => {
                let seq = self.seq;
                self.seq += 1;
                ToDeviceFields {
                    room_id: Some(self.room_id.0.clone()),
                    device_id: Some(ctx.local.device_id.0.clone()),
                    seq: Some(seq),
                    conf_id: self.group.as_ref().map(|g| g.group.call_id.clone()),
                    sender_session_id: self
                        .group
                        .as_ref()
                        .map(|g| g.local_session.clone())
                        .filter(|s| !s.is_empty()),
                    dest_session_id: self
                        .group
                        .as_ref()
                        .map(|g| g.remote_session.clone())
                        .filter(|s| !s.is_empty()),
                }
            }
        };
        let common = Common {
            call_id: self.id.0.clone(),
            party_id: Some(self.local_party.0.clone()),
            version: CallVersion::V1,
            to_device,
        };
        let content = wire::to_content(&common, &event);
        let event_type = match &self.group {
            Some(g) if g.famedly() && self.signalling == Signalling::ToDevice => {
                crate::wire::call::famedly_event_type(event.event_type())
            }
            _ => event.event_type().to_owned(),
        };
        let kind = match (self.signalling, &self.peer_device) {
            (Signalling::ToDevice, Some(device)) => SendKind::ToDevice {
                event_type,
                room_id: Some(self.room_id.clone()),
                messages: vec![ToDeviceMessage {
                    user_id: self.peer_user.clone(),
                    device_id: device.clone(),
                    content: std::sync::Arc::new(content),
                }],
                // Receivers accept to-device call events only Olm-encrypted (the sending device
                // is proven by Olm alone): never send them in clear.
                encryption: ToDeviceEncryption::Required,
            },
            _ => SendKind::RoomEvent { room_id: self.room_id.clone(), event_type, content },
        };
        self.on_wire = true;
        let prefix = format!("voip.{}", self.local_party);
        ctx.sends.send(ctx.out, Some(self.id.clone()), purpose, &prefix, kind);
    }

    pub(super) fn capabilities(ctx: &Ctx<'_>) -> Capabilities {
        Capabilities { transferee: ctx.config.transferee, dtmf: false }
    }

    pub(super) fn peer_is_v1(&self) -> bool {
        self.opponent.as_ref().is_some_and(|o| o.version == CallVersion::V1)
    }

    /// A send for this call failed for good.
    pub(crate) fn send_gave_up(&mut self, ctx: &mut Ctx<'_>, purpose: SendPurpose) {
        match purpose {
            // The peer has heard from us (it invited us, or answered our invite): end the call
            // and tell it. A send that "failed" may have reached it (a lost response looks the
            // same) and a later send may get through; without the hangup a caller that got our
            // answer kept a connected call we had ended (sim mesh seed 5621: its mesh call was
            // never placed again).
            SendPurpose::Setup | SendPurpose::Candidates if self.opponent.is_some() => {
                self.hangup(ctx, EndReason::SignallingTimeout, Initiator::Library);
            }
            // Our invite never got through: nobody to tell.
            SendPurpose::Setup | SendPurpose::Candidates => {
                self.end(ctx, EndReason::SignallingTimeout, Initiator::Library, false);
            }
            SendPurpose::Ending | SendPurpose::Other => {}
        }
    }
}
