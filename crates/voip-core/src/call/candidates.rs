//! ICE candidates of one call: the local trickle queue with its batching rules, and remote
//! candidates buffered until the remote description is set and the answering party is chosen.

use std::collections::BTreeMap;

use crate::media::Candidate;

/// Most candidates buffered per party, and most parties buffered per call.
const MAX_PER_PARTY: usize = 512;
const MAX_PARTIES: usize = 16;

#[derive(Debug, Default)]
pub(crate) struct Candidates {
    local: Vec<Candidate>,
    gathering_complete: bool,
    eoc_sent: bool,
    /// The invite or answer went out, so candidates may follow.
    signalled: bool,
    /// A batch went out since gathering (re)started: later batches wait the longer window.
    batch_sent: bool,
    pub(crate) remote_description_set: bool,
    remote: BTreeMap<Option<String>, Vec<Candidate>>,
}

impl Candidates {
    /// Queues a local candidate. Returns whether a batch timer should be armed.
    pub(crate) fn push_local(&mut self, c: Candidate) -> bool {
        if c.is_end_of_candidates() {
            // Some engines report completion as an empty candidate.
            self.gathering_complete = true;
            return self.signalled;
        }
        self.local.push(c);
        self.signalled
    }

    /// Gathering finished. Returns whether to flush now.
    pub(crate) fn gathering_complete(&mut self) -> bool {
        self.gathering_complete = true;
        self.signalled
    }

    /// The invite or answer went out. Returns whether to flush now (gathering already complete).
    pub(crate) fn set_signalled(&mut self) -> bool {
        self.signalled = true;
        self.gathering_complete
    }

    pub(crate) fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// How long the batch being started waits: the first one of a gathering round `first_ms`
    /// (it queues behind the invite or answer anyway), later ones `later_ms`.
    pub(crate) fn batch_window(&self, first_ms: u64, later_ms: u64) -> u64 {
        if self.batch_sent {
            later_ms
        } else {
            first_ms
        }
    }

    /// The batch to send now, with end-of-candidates once gathering is complete.
    pub(crate) fn take_local(&mut self) -> Option<Vec<Candidate>> {
        if !self.signalled {
            return None;
        }
        let mut batch = std::mem::take(&mut self.local);
        if self.gathering_complete && !self.eoc_sent {
            batch.push(Candidate::end_of_candidates());
            self.eoc_sent = true;
        }
        if !batch.is_empty() {
            self.batch_sent = true;
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// An ICE restart: old candidates are obsolete and gathering starts again.
    pub(crate) fn restart_gathering(&mut self) {
        self.local.clear();
        self.gathering_complete = false;
        self.eoc_sent = false;
        self.batch_sent = false;
    }

    pub(crate) fn clear(&mut self) {
        self.local.clear();
        self.remote.clear();
    }

    /// Remote candidates from `party`. `chosen` is `None` while no answering party is chosen
    /// (outgoing call before the answer), else the chosen party. Returns the candidates to apply
    /// now, if any.
    pub(crate) fn push_remote(
        &mut self,
        party: Option<&str>,
        candidates: Vec<Candidate>,
        chosen: Option<Option<&str>>,
    ) -> Option<Vec<Candidate>> {
        match chosen {
            Some(p) if p != party => None,
            Some(_) if self.remote_description_set => (!candidates.is_empty()).then_some(candidates),
            _ => {
                if !self.remote.contains_key(&party.map(str::to_owned)) && self.remote.len() >= MAX_PARTIES {
                    return None;
                }
                let buf = self.remote.entry(party.map(str::to_owned)).or_default();
                let room = MAX_PER_PARTY.saturating_sub(buf.len());
                buf.extend(candidates.into_iter().take(room));
                None
            }
        }
    }

    /// The answering party is chosen and the remote description set: its buffered candidates,
    /// everyone else's dropped.
    pub(crate) fn take_remote_for(&mut self, party: Option<&str>) -> Vec<Candidate> {
        let mine = self.remote.remove(&party.map(str::to_owned)).unwrap_or_default();
        self.remote.clear();
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u32) -> Candidate {
        Candidate {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }
    }

    #[test]
    fn local_batches_wait_for_signalling_and_end_once() {
        let mut q = Candidates::default();
        assert!(!q.push_local(c(1)));
        assert_eq!(q.take_local(), None);
        assert!(!q.gathering_complete());
        assert!(q.set_signalled());
        let batch = q.take_local().unwrap();
        assert_eq!(batch.len(), 2);
        assert!(batch[1].is_end_of_candidates());
        assert_eq!(q.take_local(), None);
        q.restart_gathering();
        assert!(q.push_local(c(2)));
        assert_eq!(q.take_local().unwrap().len(), 1);
    }

    #[test]
    fn remote_buffered_per_party_until_chosen() {
        let mut q = Candidates::default();
        assert_eq!(q.push_remote(Some("a"), vec![c(1)], None), None);
        assert_eq!(q.push_remote(Some("b"), vec![c(2)], None), None);
        q.remote_description_set = true;
        assert_eq!(q.take_remote_for(Some("b")), vec![c(2)]);
        assert_eq!(q.push_remote(Some("a"), vec![c(3)], Some(Some("b"))), None);
        assert_eq!(q.push_remote(Some("b"), vec![c(4)], Some(Some("b"))), Some(vec![c(4)]));
    }
}
