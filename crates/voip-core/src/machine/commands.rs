//! App commands: routed to the call or group call they name.

use super::*;

impl VoipMachine {
    pub(super) fn call_mut(&mut self, call_id: &CallId) -> Result<&mut Call, ApiMisuse> {
        self.calls.get_mut(call_id).ok_or_else(|| ApiMisuse::UnknownCall { call_id: call_id.clone() })
    }

    pub(super) fn handle_command(&mut self, command: Command) -> Result<Option<CallId>, Error> {
        match command {
            Command::PlaceCall { room_id, invitee, invitee_device, call_type, signalling } => {
                if invitee == self.local.user_id
                    && invitee_device.as_ref().is_none_or(|d| *d == self.local.device_id)
                {
                    return Err(ApiMisuse::CallingSelf.into());
                }
                if signalling == Signalling::ToDevice && invitee_device.is_none() {
                    return Err(ApiMisuse::MissingDevice.into());
                }
                if let Some(c) = self.calls.values().find(|c| c.room_id == room_id && c.peer_user == invitee)
                {
                    return Err(ApiMisuse::AlreadyInCall { call_id: c.id.clone() }.into());
                }
                let id = CallId(format!("{}{}", self.now.0, self.rng.alnum(16)));
                let call = Call::outgoing(
                    &mut ctx!(self),
                    Outgoing {
                        id: id.clone(),
                        room_id,
                        invitee,
                        invitee_device,
                        call_type,
                        signalling,
                        group: None,
                        mutes: (false, false),
                    },
                );
                self.calls.insert(id.clone(), call);
                Ok(Some(id))
            }
            Command::JoinGroupCall {
                room_id,
                call_id,
                application,
                scope,
                dialect,
                focus,
                owned_state_keys,
                notify,
                encryption,
            } => {
                let group = GroupCallId { room_id, call_id };
                if self
                    .groups
                    .get(&group)
                    .is_some_and(|g| matches!(g.state, GroupCallState::Joining | GroupCallState::Joined))
                {
                    return Err(ApiMisuse::AlreadyInGroupCall { group }.into());
                }
                // Joining again while our leave is still on its way replaces the old join; the
                // old join's late results are told apart by the generation.
                self.group_generation += 1;
                let params = JoinParams {
                    encryption: encryption.unwrap_or_else(|| self.room_encryption(&group.room_id)),
                    encryption_defaulted: encryption.is_none(),
                    group: group.clone(),
                    application,
                    scope,
                    dialect,
                    focus,
                    owned_state_keys,
                    notify,
                };
                let generation = self.group_generation;
                let leave_in_flight =
                    self.groups.get(&group).is_some_and(|g| g.state == GroupCallState::Leaving);
                let mut g =
                    GroupCall::join(&mut ctx!(self), &self.store, params, self.delayed_events, generation);
                g.resend_key_on_join = leave_in_flight;
                // The app already knows who is in the call from observing it.
                g.participants = self.observed.remove(&group).unwrap_or_default();
                self.groups.insert(group.clone(), g);
                self.refresh_group(&group);
                self.cancel_stale_delayed();
                Ok(None)
            }
            Command::LeaveGroupCall { room_id, call_id } => {
                let group = GroupCallId { room_id, call_id };
                let mut ctx = ctx!(self);
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                g.leave(&mut ctx, &self.store);
                self.reconcile_mesh(&group);
                Ok(None)
            }
            Command::SetGroupMuted { room_id, call_id, audio, video } => {
                let group = GroupCallId { room_id, call_id };
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                g.mutes = (audio.unwrap_or(g.mutes.0), video.unwrap_or(g.mutes.1));
                let mut ctx = ctx!(self);
                for c in
                    self.calls.values_mut().filter(|c| c.group.as_ref().is_some_and(|l| l.group == group))
                {
                    // A call still being set up takes the state when it attaches its media.
                    if c.cmd_mute(&mut ctx, audio, video).is_err() {
                        c.inherit_mutes(g.mutes);
                    }
                }
                Ok(None)
            }
            Command::SetGroupScreenshare { room_id, call_id, enabled } => {
                let group = GroupCallId { room_id, call_id };
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                g.screenshare = enabled;
                let mut ctx = ctx!(self);
                for c in
                    self.calls.values_mut().filter(|c| c.group.as_ref().is_some_and(|l| l.group == group))
                {
                    // Calls not connected yet get it once they connect (see `handle_media`).
                    let _ = c.cmd_screenshare(&mut ctx, enabled);
                }
                Ok(None)
            }
            Command::RequestEncryptionKeys { room_id, call_id, participants } => {
                let group = GroupCallId { room_id, call_id };
                let mut ctx = ctx!(self);
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                let from = participants.unwrap_or_else(|| g.participants.iter().cloned().collect());
                if let Some(keys) = g.keys.as_mut() {
                    keys.request_keys(&mut ctx, &from);
                }
                Ok(None)
            }
            Command::SetCanHandleNewCall { value } => {
                self.can_handle_override = value;
                Ok(None)
            }
            Command::Answer { call_id, call_type } => {
                let mut ctx = ctx!(self);
                let call = self.calls.get_mut(&call_id).ok_or(ApiMisuse::UnknownCall { call_id })?;
                call.cmd_answer(&mut ctx, call_type)?;
                Ok(None)
            }
            Command::Reject { call_id, emit } => {
                let mut ctx = ctx!(self);
                let call = self.calls.get_mut(&call_id).ok_or(ApiMisuse::UnknownCall { call_id })?;
                call.cmd_reject(&mut ctx, emit)?;
                Ok(None)
            }
            Command::Hangup { call_id, reason } => {
                self.call_mut(&call_id)?;
                let mut ctx = ctx!(self);
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.hangup(&mut ctx, reason.unwrap_or(EndReason::UserHangup), Initiator::LocalUser);
                }
                Ok(None)
            }
            Command::SetHold { call_id, on_hold } => {
                self.with_call(call_id, |c, ctx| c.cmd_hold(ctx, on_hold))
            }
            Command::SetMuted { call_id, audio, video } => {
                self.with_call(call_id, |c, ctx| c.cmd_mute(ctx, audio, video))
            }
            Command::SetScreenshare { call_id, enabled } => {
                self.with_call(call_id, |c, ctx| c.cmd_screenshare(ctx, enabled))
            }
            Command::RestartIce { call_id } => self.with_call(call_id, |c, ctx| c.cmd_restart_ice(ctx)),
            Command::SendAssertedIdentity { call_id, identity } => self.with_call(call_id, |c, ctx| {
                c.cmd_send(ctx, CallEvent::AssertedIdentity { identity }, "send_asserted_identity")
            }),
            Command::SendReplaces { call_id, replaces } => self.with_call(call_id, |c, ctx| {
                c.cmd_send(ctx, CallEvent::Replaces { replaces }, "send_replaces")
            }),
        }
    }

    pub(super) fn with_call(
        &mut self,
        call_id: CallId,
        f: impl FnOnce(&mut Call, &mut Ctx<'_>) -> Result<(), ApiMisuse>,
    ) -> Result<Option<CallId>, Error> {
        let mut ctx = ctx!(self);
        let call = self.calls.get_mut(&call_id).ok_or(ApiMisuse::UnknownCall { call_id })?;
        f(call, &mut ctx)?;
        Ok(None)
    }
}
