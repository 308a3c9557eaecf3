//! MSC4075 call notifications and MSC4310 declines: routing only (the rule is
//! `group::notification::receive`).

use super::*;
use crate::group::notification::{self, Received};

impl VoipMachine {
    /// MSC4075 ring/notify and MSC4310 decline: surfaced to the app while valid, counted
    /// otherwise.
    pub(super) fn handle_rtc_notification(&mut self, e: RoomEvent) {
        match notification::receive(&e, self.now, &self.local.user_id) {
            Received::Echo => self.counters.echoes += 1,
            Received::Malformed => self.counters.malformed += 1,
            Received::Expired => self.counters.expired += 1,
            Received::NotForUs => self.counters.not_for_us += 1,
            Received::Declined { notification_event_id } => {
                self.counters.applied += 1;
                self.out.push_back(Output::Event(Event::GroupCallDeclined {
                    room_id: e.room_id,
                    sender: e.sender,
                    notification_event_id,
                }));
            }
            Received::Notify { notification_type, expires_at } => {
                self.counters.applied += 1;
                self.out.push_back(Output::Event(Event::GroupCallNotification {
                    room_id: e.room_id,
                    sender: e.sender,
                    event_id: e.event_id,
                    notification_type,
                    expires_at,
                }));
            }
        }
    }
}
