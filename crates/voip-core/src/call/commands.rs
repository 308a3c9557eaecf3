//! The app's commands on one call: answer, reject, send (asserted identity, replaces).

use super::*;

impl Call {
    pub(super) fn wrong_state(&self, command: &str) -> ApiMisuse {
        ApiMisuse::WrongState {
            call_id: self.id.clone(),
            command: command.to_owned(),
            state: format!("{:?}", self.state),
        }
    }

    /// `Answer`: attach media and ask for an answer.
    pub(crate) fn answer(&mut self, ctx: &mut Ctx<'_>, call_type: Option<CallType>) {
        self.stop_ringtone(ctx);
        self.timers.clear(CallTimer::RingTimeout);
        self.set_state(ctx, CallState::CreateAnswer);
        self.attach_local_media(ctx, call_type.unwrap_or(self.offered_type));
        self.answering_negotiate = false;
        self.media(ctx, MediaCommand::CreateAnswer);
        self.timers.set(CallTimer::MediaTimeout, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
    }

    pub(crate) fn cmd_answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        call_type: Option<CallType>,
    ) -> Result<(), ApiMisuse> {
        if self.state != CallState::Ringing {
            return Err(self.wrong_state("answer"));
        }
        self.answer(ctx, call_type);
        Ok(())
    }

    pub(crate) fn cmd_reject(&mut self, ctx: &mut Ctx<'_>, emit: bool) -> Result<(), ApiMisuse> {
        if self.state != CallState::Ringing {
            return Err(self.wrong_state("reject"));
        }
        if emit {
            self.hangup(ctx, EndReason::Rejected, Initiator::LocalUser);
        } else {
            self.end(ctx, EndReason::Rejected, Initiator::LocalUser, false);
        }
        Ok(())
    }

    pub(crate) fn cmd_send(
        &mut self,
        ctx: &mut Ctx<'_>,
        event: CallEvent,
        command: &str,
    ) -> Result<(), ApiMisuse> {
        if self.is_ended() || self.state == CallState::CreateOffer || self.state == CallState::Ringing {
            return Err(self.wrong_state(command));
        }
        self.send(ctx, event, SendPurpose::Other);
        Ok(())
    }
}
