//! MSC4075 call notifications and MSC4310 declines.

use super::*;

impl VoipMachine {
    /// MSC4075 ring/notify and MSC4310 decline: surfaced to the app while valid.
    pub(super) fn handle_rtc_notification(&mut self, e: RoomEvent) {
        if e.sender == self.local.user_id && e.event_type == group::RTC_NOTIFICATION {
            self.counters.echoes += 1;
            return;
        }
        let c = &e.content;
        if e.event_type == group::RTC_DECLINE {
            let Some(notification) =
                c.get("m.relates_to").and_then(|r| r.get("event_id")).and_then(|v| v.as_str())
            else {
                self.counters.malformed += 1;
                return;
            };
            self.counters.applied += 1;
            self.out.push_back(Output::Event(Event::GroupCallDeclined {
                room_id: e.room_id,
                sender: e.sender,
                notification_event_id: notification.to_owned(),
            }));
            return;
        }
        let ring = match c.get("notification_type").and_then(|v| v.as_str()) {
            Some("ring") => group::NotificationType::Ring,
            Some("notification") => group::NotificationType::Notification,
            _ => {
                self.counters.malformed += 1;
                return;
            }
        };
        // The sender's clock is trusted only within 20 s of the server's (famedly's rule);
        // the lifetime is capped at 90 s (js-sdk).
        let origin = e.origin_server_ts;
        let sent = c
            .get("sender_ts")
            .and_then(|v| v.as_u64())
            .map(Timestamp)
            .filter(|t| t.0.abs_diff(origin.0) <= 20_000)
            .unwrap_or(origin);
        let lifetime = c.get("lifetime").and_then(|v| v.as_u64()).unwrap_or(30_000).min(90_000);
        let expires_at = sent.plus(lifetime);
        if expires_at <= self.now {
            self.counters.expired += 1;
            return;
        }
        let mentioned = c.get("m.mentions").is_some_and(|m| {
            m.get("room").and_then(|r| r.as_bool()) == Some(true)
                || m.get("user_ids")
                    .and_then(|u| u.as_array())
                    .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(self.local.user_id.as_str())))
        });
        if !mentioned {
            self.counters.not_for_us += 1;
            return;
        }
        self.counters.applied += 1;
        self.out.push_back(Output::Event(Event::GroupCallNotification {
            room_id: e.room_id,
            sender: e.sender,
            event_id: e.event_id,
            notification_type: ring,
            expires_at,
        }));
    }
}
