//! Outstanding sends: minted ids, stable transaction ids, retries with back-off.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::{CallId, RequestId, Timestamp};
use crate::output::{Output, SendKind, SendRequest};

/// What a send was for, so a final failure can be acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendPurpose {
    /// Call setup (invite, answer): failure ends the call.
    Setup,
    /// Candidates: repeated failure ends the call.
    Candidates,
    /// Ending signals (hangup, reject): retried hardest, nothing left to do after.
    Ending,
    /// Anything else (select_answer, negotiate, metadata…): logged.
    Other,
}

#[derive(Clone, Debug)]
struct Pending {
    call_id: Option<CallId>,
    purpose: SendPurpose,
    txn_id: String,
    kind: SendKind,
    attempts: u32,
    retry_at: Option<Timestamp>,
}

/// What the machine must do after a send result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendVerdict {
    /// Done (sent, or retry scheduled, or unknown id).
    Nothing,
    /// The send failed for good.
    GaveUp { call_id: Option<CallId>, purpose: SendPurpose },
}

#[derive(Debug, Default)]
pub(crate) struct SendTable {
    next_id: u64,
    pending: BTreeMap<RequestId, Pending>,
}

impl SendTable {
    /// Mints an id and queues the send.
    pub(crate) fn send(
        &mut self,
        out: &mut VecDeque<Output>,
        call_id: Option<CallId>,
        purpose: SendPurpose,
        txn_prefix: &str,
        kind: SendKind,
    ) -> RequestId {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let txn_id = format!("{txn_prefix}.{}", self.next_id);
        out.push_back(Output::Send(SendRequest { id, txn_id: txn_id.clone(), kind: kind.clone() }));
        self.pending.insert(id, Pending { call_id, purpose, txn_id, kind, attempts: 0, retry_at: None });
        id
    }

    pub(crate) fn sent(&mut self, id: RequestId) {
        self.pending.remove(&id);
    }

    /// A failure: schedules a retry (same id, same txn id) or gives up.
    pub(crate) fn failed(
        &mut self,
        id: RequestId,
        now: Timestamp,
        retryable: bool,
        retry_after_ms: Option<u64>,
        max_retries: u32,
    ) -> SendVerdict {
        let Some(p) = self.pending.get_mut(&id) else { return SendVerdict::Nothing };
        // Hangups and rejects get twice the retries: a lost hangup leaves the peer ringing.
        let budget = if p.purpose == SendPurpose::Ending { max_retries * 2 } else { max_retries };
        if retryable && p.attempts < budget {
            let backoff = retry_after_ms.unwrap_or_else(|| 500u64.saturating_mul(1 << p.attempts.min(10)));
            p.attempts += 1;
            p.retry_at = Some(now.plus(backoff.clamp(1, 300_000)));
            return SendVerdict::Nothing;
        }
        let p = self.pending.remove(&id).expect("entry checked above");
        SendVerdict::GaveUp { call_id: p.call_id, purpose: p.purpose }
    }

    /// Re-emits every send whose retry time has come.
    pub(crate) fn fire(&mut self, now: Timestamp, out: &mut VecDeque<Output>) {
        for (id, p) in self.pending.iter_mut() {
            if p.retry_at.is_some_and(|at| at <= now) {
                p.retry_at = None;
                out.push_back(Output::Send(SendRequest {
                    id: *id,
                    txn_id: p.txn_id.clone(),
                    kind: p.kind.clone(),
                }));
            }
        }
    }

    pub(crate) fn next_retry(&self) -> Option<(Timestamp, RequestId)> {
        self.pending.iter().filter_map(|(id, p)| p.retry_at.map(|at| (at, *id))).min()
    }

    /// Number of sends awaiting a result.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomId;

    fn kind() -> SendKind {
        SendKind::RoomEvent {
            room_id: RoomId::from("!r"),
            event_type: "m.call.hangup".into(),
            content: serde_json::json!({}),
        }
    }

    #[test]
    fn retries_keep_id_and_txn_then_give_up() {
        let mut t = SendTable::default();
        let mut out = VecDeque::new();
        let id = t.send(&mut out, None, SendPurpose::Other, "voip", kind());
        let Output::Send(first) = out.pop_front().unwrap() else { panic!("expected a send") };
        for attempt in 0..3 {
            assert_eq!(t.failed(id, Timestamp(0), true, None, 3), SendVerdict::Nothing);
            let (at, rid) = t.next_retry().unwrap();
            assert_eq!((at, rid), (Timestamp(500 << attempt), id));
            t.fire(at, &mut out);
            let Output::Send(again) = out.pop_front().unwrap() else { panic!("expected a resend") };
            assert_eq!((again.id, again.txn_id.as_str()), (first.id, first.txn_id.as_str()));
        }
        assert_eq!(
            t.failed(id, Timestamp(0), true, None, 3),
            SendVerdict::GaveUp { call_id: None, purpose: SendPurpose::Other }
        );
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn rate_limit_honours_retry_after_and_non_retryable_gives_up() {
        let mut t = SendTable::default();
        let mut out = VecDeque::new();
        let id = t.send(&mut out, None, SendPurpose::Ending, "voip", kind());
        t.failed(id, Timestamp(1000), true, Some(7000), 1);
        assert_eq!(t.next_retry(), Some((Timestamp(8000), id)));
        let id2 = t.send(&mut out, None, SendPurpose::Setup, "voip", kind());
        assert!(matches!(t.failed(id2, Timestamp(0), false, None, 5), SendVerdict::GaveUp { .. }));
        t.sent(id);
        assert_eq!(t.len(), 0);
    }
}
