//! Routing a settled send (the rules are `SendTable::settle`'s): to the group operation or call
//! it belonged to, or to the start-up listing of delayed events.

use super::*;
use crate::RequestId;

impl VoipMachine {
    /// Hands what a send's outcome means to whoever sent it.
    pub(super) fn route_settled(&mut self, id: RequestId, settled: Settled) {
        let listing = self.delayed_listing == DelayedListing::InFlight(id);
        match settled {
            Settled::Listed(delayed_events) => {
                if listing {
                    self.delayed_listed(delayed_events);
                }
            }
            Settled::Sent { group, event_id, delay_id } => {
                if listing {
                    // An adapter that answers the listing without a list: nothing known.
                    self.delayed_listing = DelayedListing::Done;
                }
                if let Some((group, generation, op)) = group {
                    self.group_sent(&group, generation, op, group::Sent { event_id, delay_id });
                }
            }
            Settled::Pending => {}
            Settled::GaveUp { call_id, purpose, group, errcode, max_delay_ms } => {
                tracing::warn!(%id, ?call_id, ?purpose, "giving up on a send");
                if listing {
                    // No listing endpoint (404/400 `M_UNRECOGNIZED`) or no luck: counted, and
                    // not asked again (stale delayed leaves are still caught when they fire:
                    // the rejoin path).
                    tracing::info!(?errcode, "delayed events cannot be listed here");
                    self.counters.delayed_event_listing_failed += 1;
                    self.delayed_listing = DelayedListing::Done;
                }
                if let Some(call) = call_id.and_then(|c| self.calls.get_mut(&c)) {
                    call.send_gave_up(&mut ctx!(self), purpose);
                }
                if let Some((group, generation, op)) = group {
                    self.group_failed(&group, generation, op, errcode.as_deref(), max_delay_ms);
                }
            }
        }
    }
}
