//! MSC4075 call notifications (`ring` / `notification`) and MSC4310 declines, received: which
//! ones reach the app, and until when. Sending ours is [`super::GroupCall`]'s join.

use crate::ids::{Timestamp, UserId};
use crate::input::RoomEvent;

use super::{NotificationType, RTC_DECLINE, RTC_NOTIFICATION};

/// The sender's `sender_ts` is believed only within this much of the server's timestamp
/// (famedly's rule); otherwise the server's counts.
const SENDER_CLOCK_TRUST_MS: u64 = 20_000;
/// `lifetime` when the notification names none.
const DEFAULT_LIFETIME_MS: u64 = 30_000;
/// No notification rings longer than this, whatever its `lifetime` says (js-sdk's cap).
const MAX_LIFETIME_MS: u64 = 90_000;

/// What a received notification or decline is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// An MSC4310 decline of the notification `notification_event_id`.
    Declined { notification_event_id: String },
    /// An MSC4075 notification for us, valid until `expires_at`.
    Notify { notification_type: NotificationType, expires_at: Timestamp },
    /// The echo of our own notification.
    Echo,
    /// Without the fields it needs (a decline without its relation, an unknown
    /// `notification_type`).
    Malformed,
    /// Its lifetime is over.
    Expired,
    /// It mentions neither the room nor us.
    NotForUs,
}

/// Judges a received `org.matrix.msc4075.rtc.notification` or `org.matrix.msc4310.rtc.decline`
/// at `now`, for the local user `us`.
pub(crate) fn receive(e: &RoomEvent, now: Timestamp, us: &UserId) -> Received {
    if e.sender == *us && e.event_type == RTC_NOTIFICATION {
        return Received::Echo;
    }
    let c = &e.content;
    if e.event_type == RTC_DECLINE {
        return match c.get("m.relates_to").and_then(|r| r.get("event_id")).and_then(|v| v.as_str()) {
            Some(id) => Received::Declined { notification_event_id: id.to_owned() },
            None => Received::Malformed,
        };
    }
    let notification_type = match c.get("notification_type").and_then(|v| v.as_str()) {
        Some("ring") => NotificationType::Ring,
        Some("notification") => NotificationType::Notification,
        _ => return Received::Malformed,
    };
    let origin = e.origin_server_ts;
    let sent = c
        .get("sender_ts")
        .and_then(|v| v.as_u64())
        .map(Timestamp)
        .filter(|t| t.0.abs_diff(origin.0) <= SENDER_CLOCK_TRUST_MS)
        .unwrap_or(origin);
    let lifetime =
        c.get("lifetime").and_then(|v| v.as_u64()).unwrap_or(DEFAULT_LIFETIME_MS).min(MAX_LIFETIME_MS);
    let expires_at = sent.plus(lifetime);
    if expires_at <= now {
        return Received::Expired;
    }
    let mentioned = c.get("m.mentions").is_some_and(|m| {
        m.get("room").and_then(|r| r.as_bool()) == Some(true)
            || m.get("user_ids")
                .and_then(|u| u.as_array())
                .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(us.as_str())))
    });
    if !mentioned {
        return Received::NotForUs;
    }
    Received::Notify { notification_type, expires_at }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(sender: &str, event_type: &str, content: serde_json::Value, origin: u64) -> RoomEvent {
        serde_json::from_value(json!({
            "room_id": "!r:x", "sender": sender, "event_id": "$n", "type": event_type,
            "content": content, "origin_server_ts": origin,
        }))
        .expect("a room event")
    }

    #[test]
    fn a_ring_for_the_room_is_valid_for_its_capped_lifetime_from_a_trusted_sender_clock() {
        let us = UserId::from("@us:x");
        let ring = |sender_ts: u64, lifetime: u64| {
            event(
                "@them:x",
                RTC_NOTIFICATION,
                json!({"notification_type": "ring", "m.mentions": {"room": true}, "sender_ts": sender_ts, "lifetime": lifetime}),
                100_000,
            )
        };
        // Sender clock within 20 s: believed.
        assert_eq!(
            receive(&ring(95_000, 30_000), Timestamp(100_000), &us),
            Received::Notify { notification_type: NotificationType::Ring, expires_at: Timestamp(125_000) }
        );
        // Sender clock 60 s off: the server's; lifetime capped at 90 s.
        assert_eq!(
            receive(&ring(40_000, 600_000), Timestamp(100_000), &us),
            Received::Notify { notification_type: NotificationType::Ring, expires_at: Timestamp(190_000) }
        );
        assert_eq!(receive(&ring(95_000, 30_000), Timestamp(125_000), &us), Received::Expired);
    }

    #[test]
    fn mentions_echoes_and_declines() {
        let us = UserId::from("@us:x");
        let notify = |mentions: serde_json::Value| {
            event(
                "@them:x",
                RTC_NOTIFICATION,
                json!({"notification_type": "notification", "m.mentions": mentions}),
                0,
            )
        };
        let now = Timestamp(1);
        assert_eq!(receive(&notify(json!({"user_ids": ["@other:x"]})), now, &us), Received::NotForUs);
        assert!(matches!(
            receive(&notify(json!({"user_ids": ["@us:x"]})), now, &us),
            Received::Notify { .. }
        ));
        let ours = event("@us:x", RTC_NOTIFICATION, json!({"notification_type": "ring"}), 0);
        assert_eq!(receive(&ours, now, &us), Received::Echo);
        let odd = event(
            "@them:x",
            RTC_NOTIFICATION,
            json!({"notification_type": "shout", "m.mentions": {"room": true}}),
            0,
        );
        assert_eq!(receive(&odd, now, &us), Received::Malformed);
        let decline = event(
            "@them:x",
            RTC_DECLINE,
            json!({"m.relates_to": {"rel_type": "m.reference", "event_id": "$ring"}}),
            0,
        );
        assert_eq!(receive(&decline, now, &us), Received::Declined { notification_event_id: "$ring".into() });
        assert_eq!(receive(&event("@them:x", RTC_DECLINE, json!({}), 0), now, &us), Received::Malformed);
    }
}
