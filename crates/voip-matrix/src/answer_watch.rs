//! The callee's answer without waiting for the app's sync loop.
//!
//! matrix-sdk's `Client::sync` (and `sync_stream`) sleeps one second before a request that follows
//! the previous response within a second (`delay_sync`). A caller's sync always has a response in
//! the second before the answer arrives — the echo of its own invite — and another one just
//! before it is common (any event for the account: a receipt, a message, the echo of the previous
//! call's hangup, the callee's room key): the answer then waits for the sleep, a second per
//! set-up (`docs/benchmarks.md`, "Sync modes").
//!
//! So, after our invite is out, the adapter long-polls `/sync` itself for that room's timeline
//! (a filter: the room, not our own events, nothing else) until the call is answered, rejected
//! or hung up, or [`WATCH_FOR`] passes. Every request starts from the **client's** current sync
//! token, never from one of its own responses: Synapse deletes to-device messages up to the
//! `since` token of a request, and the client's own sync must still get every Olm message. The
//! answer is decrypted with the client's Olm machine (`Room::decrypt_event`, so it carries its
//! Megolm sender device as on the normal path) and forwarded like any synced call event; the
//! client's sync delivers it again later, and the core takes the second copy as a duplicate. An
//! answer the client cannot decrypt yet (the callee's first Megolm session in the room arrives
//! as a to-device message, which only the client's sync processes) is left to the normal path.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::ruma::api::client::filter::{Filter, FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::sync::sync_events::v3;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::presence::PresenceState;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::OwnedRoomId;
use matrix_sdk::store::{StateStoreDataKey, StateStoreDataValue};
use matrix_sdk::Room;
use serde_json::Value;
use tokio::time::Instant;
use voip_core::Input;

use crate::adapter::Inner;
use crate::inbound;

/// How long a placed call's answer is watched for: an invite's usual lifetime (60 s, js-sdk and
/// ours); the app's sync delivers the answer in any case.
pub(crate) const WATCH_FOR: Duration = Duration::from_secs(60);
/// Longest single long-poll.
const POLL: Duration = Duration::from_secs(3);
/// Least time between two requests whose responses brought nothing new (the client's token
/// lags behind events we have already forwarded until its sync catches up); doubles while
/// nothing new comes (an app whose sync has stalled), up to [`POLL`].
const IDLE_SPACING: Duration = Duration::from_millis(100);

/// Events remembered per watch at most: a room flooded with events (by anyone) ends the watch
/// early instead of growing its memory; the app's sync delivers the answer in any case.
const MAX_SEEN: usize = 1024;

/// Call event types that settle an invite (the watch ends when one for its call comes, through
/// it or through the app's sync).
pub(crate) fn settles(event_type: &str) -> bool {
    matches!(event_type, "m.call.answer" | "m.call.reject" | "m.call.hangup")
}

/// Watches `room` for the answer to our invite `call_id`; returns the number of call events it
/// forwarded ahead of the app's sync.
pub(crate) async fn watch(inner: Weak<Inner>, room: Room, call_id: String) -> u64 {
    let deadline = Instant::now() + WATCH_FOR;
    let mut seen: HashSet<String> = HashSet::new();
    let mut forwarded = 0;
    let mut idle = IDLE_SPACING;
    let filter = room_filter(room.room_id().to_owned(), &room);
    while Instant::now() < deadline {
        let (client, since) = {
            let Some(inner) = inner.upgrade() else { break };
            if !inner.is_watched(&call_id) {
                break;
            }
            let Some(since) = client_token(&inner.client).await else { break };
            (inner.client.clone(), since)
        };
        let started = Instant::now();
        let mut request = v3::Request::new();
        request.since = Some(since);
        request.filter = Some(v3::Filter::FilterDefinition(filter.clone()));
        request.set_presence = PresenceState::Offline;
        request.timeout = Some(POLL.min(deadline.saturating_duration_since(started)));
        let response = match client.send(request).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "answer watch: /sync failed; the app's sync delivers");
                break;
            }
        };
        let mut fresh = false;
        let mut done = false;
        let events =
            response.rooms.join.get(room.room_id()).map(|j| j.timeline.events.clone()).unwrap_or_default();
        for raw in events {
            let Ok(json) = raw.deserialize_as_unchecked::<Value>() else { continue };
            let Some(event_id) = json.get("event_id").and_then(Value::as_str) else { continue };
            if seen.len() >= MAX_SEEN {
                tracing::debug!("answer watch: the room is too busy; the app's sync delivers");
                done = true;
                break;
            }
            if !seen.insert(event_id.to_owned()) {
                continue;
            }
            fresh = true;
            let Some((json, megolm)) = decrypted(&room, raw.cast_unchecked(), json).await else { continue };
            let Some(ev) = inbound::room_event_from_json(
                room.room_id().as_str(),
                &json,
                megolm.as_ref().map(|d| d.as_deref()),
            ) else {
                continue;
            };
            let ours = ev.content.get("call_id").and_then(Value::as_str) == Some(call_id.as_str());
            done |= ours && settles(&ev.event_type);
            tracing::debug!(room = %ev.room_id, r#type = %ev.event_type, "call event ahead of the app's sync");
            let Some(inner) = inner.upgrade() else { return forwarded };
            if !inner.forward_ahead(Input::RoomEvent(ev)).await {
                return forwarded;
            }
            forwarded += 1;
        }
        if done {
            break;
        }
        if fresh {
            idle = IDLE_SPACING;
        } else {
            tokio::time::sleep_until(started + idle).await;
            idle = (idle * 2).min(POLL);
        }
    }
    if let Some(inner) = inner.upgrade() {
        inner.unwatch(&call_id);
    }
    forwarded
}

/// The room's timeline without our own events; nothing else (no state, presence, receipts,
/// account data). `lazy_load_members` keeps the response small.
fn room_filter(room_id: OwnedRoomId, room: &Room) -> FilterDefinition {
    let mut timeline = RoomEventFilter::default();
    timeline.limit = Some(20u32.into());
    timeline.not_senders = vec![room.own_user_id().to_owned()];
    let mut state = RoomEventFilter::with_lazy_loading();
    state.types = Some(Vec::new());
    let mut rooms = RoomFilter::default();
    rooms.rooms = Some(vec![room_id]);
    rooms.timeline = timeline;
    rooms.state = state;
    rooms.ephemeral = RoomEventFilter::ignore_all();
    rooms.account_data = RoomEventFilter::ignore_all();
    let mut filter = FilterDefinition::default();
    filter.room = rooms;
    filter.presence = Filter::ignore_all();
    filter.account_data = Filter::ignore_all();
    filter
}

/// The client's current sync token (`None` before its first sync).
async fn client_token(client: &matrix_sdk::Client) -> Option<String> {
    match client.state_store().get_kv_data(StateStoreDataKey::SyncToken).await {
        Ok(Some(StateStoreDataValue::SyncToken(token))) => Some(token),
        _ => None,
    }
}

/// The event as the app's sync would give it: decrypted when it was encrypted (with the Megolm
/// sender device), as is otherwise; `None` when it cannot be decrypted yet.
async fn decrypted(
    room: &Room,
    raw: Raw<OriginalSyncRoomEncryptedEvent>,
    json: Value,
) -> Option<(Value, Option<Option<String>>)> {
    if json.get("type").and_then(Value::as_str) != Some("m.room.encrypted") {
        return Some((json, None));
    }
    let event: TimelineEvent = room.decrypt_event(&raw, None).await.ok()?;
    let info = event.encryption_info()?.clone();
    let json = event.raw().deserialize_as_unchecked::<Value>().ok()?;
    Some((json, Some(info.sender_device.as_ref().map(|d| d.to_string()))))
}
