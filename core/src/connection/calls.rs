//! The two call tables of a connection, both fixed-size: this side's calls
//! waiting for replies ([`Calls`]) and the peer's calls this side owes an
//! answer ([`Answers`]).
//!
//! Policy (module docs of [`super`] say it for users):
//! - Ids are issued in order from 1 (0 is never used), wrapping.
//! - Every call has a deadline. Once past it is reported
//!   ([`Calls::take_expired`]) the call is *abandoned*, and so is a call the
//!   application cancels. An abandoned call keeps its slot
//!   until its late reply comes (dropped quietly) or a new call needs the
//!   slot: the oldest abandoned slot is then reclaimed and its id
//!   *forgotten*. No slot stays taken for ever, whatever the peer does.
//! - A reply to an id not in the table is late (dropped) when it is no
//!   newer than the newest forgotten id and was issued; otherwise it was
//!   never asked or was answered already: a protocol error.

use crate::message::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Waiting for a reply until `deadline` (ms).
    Waiting {
        id: u32,
        deadline: u64,
    },
    /// Timed out (and reported) or cancelled: a reply is dropped.
    Abandoned {
        id: u32,
    },
}

/// What a reply means for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// It answers a call in flight (now removed).
    Delivered,
    /// It answers an abandoned or forgotten call: drop it.
    Late,
    /// No such call was made, or it was answered already.
    Unknown,
}

/// This side's calls in flight.
#[derive(Debug, Clone)]
pub(crate) struct Calls<const N: usize> {
    slots: [Slot; N],
    next_id: u32,
    /// Ids issued so far (saturating): an older id was never issued.
    issued: u32,
    /// The newest id whose abandoned slot was reclaimed.
    forgotten: Option<u32>,
}

impl<const N: usize> Calls<N> {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [Slot::Free; N],
            next_id: 1,
            issued: 0,
            forgotten: None,
        }
    }

    /// How many ids ago `id` was issued (1: the last one).
    fn age(&self, id: u32) -> u32 {
        self.next_id.wrapping_sub(id)
    }

    /// A free slot and the id of the next call, reclaiming the oldest
    /// abandoned slot when none is free. `None`: every slot waits for a
    /// reply.
    pub(crate) fn reserve(&mut self) -> Option<(usize, u32)> {
        let slot = match self.slots.iter().position(|s| *s == Slot::Free) {
            Some(i) => i,
            None => {
                let mut oldest: Option<(usize, u32)> = None;
                for (i, s) in self.slots.iter().enumerate() {
                    if let Slot::Abandoned { id } = *s
                        && oldest.is_none_or(|(_, o)| self.age(id) > self.age(o))
                    {
                        oldest = Some((i, id));
                    }
                }
                let (i, id) = oldest?;
                if self.forgotten.is_none_or(|f| self.age(id) < self.age(f)) {
                    self.forgotten = Some(id);
                }
                self.slots[i] = Slot::Free;
                i
            }
        };
        Some((slot, self.next_id))
    }

    /// Puts the call `id` (from [`Self::reserve`]) in flight.
    pub(crate) fn commit(&mut self, slot: usize, id: u32, deadline: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::Waiting { id, deadline };
        }
        self.next_id = id.wrapping_add(1).max(1);
        self.issued = self.issued.saturating_add(1);
    }

    /// A reply (or error) for `id` arrived.
    pub(crate) fn complete(&mut self, id: u32) -> Completion {
        for s in &mut self.slots {
            match *s {
                Slot::Waiting { id: i, .. } if i == id => {
                    *s = Slot::Free;
                    return Completion::Delivered;
                }
                Slot::Abandoned { id: i } if i == id => {
                    *s = Slot::Free;
                    return Completion::Late;
                }
                _ => {}
            }
        }
        let age = self.age(id);
        match self.forgotten {
            Some(f) if id != 0 && age >= self.age(f) && age <= self.issued => Completion::Late,
            _ => Completion::Unknown,
        }
    }

    /// A call whose deadline is `now` or earlier, now abandoned (the
    /// caller reports its timeout).
    pub(crate) fn take_expired(&mut self, now: u64) -> Option<u32> {
        for s in &mut self.slots {
            if let Slot::Waiting { id, deadline } = *s
                && deadline <= now
            {
                *s = Slot::Abandoned { id };
                return Some(id);
            }
        }
        None
    }

    /// Abandons call `id`; false when it is not in flight.
    pub(crate) fn cancel(&mut self, id: u32) -> bool {
        for s in &mut self.slots {
            if let Slot::Waiting { id: i, .. } = *s
                && i == id
            {
                *s = Slot::Abandoned { id };
                return true;
            }
        }
        false
    }

    /// The earliest deadline of a call waiting for its reply (`u64::MAX`:
    /// none).
    pub(crate) fn next_deadline(&self) -> u64 {
        let mut next = u64::MAX;
        for s in &self.slots {
            if let Slot::Waiting { deadline, .. } = *s {
                next = next.min(deadline);
            }
        }
        next
    }

    /// Calls waiting for a reply (those past their deadline and not yet
    /// reported included).
    pub(crate) fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Waiting { .. }))
            .count()
    }
}

/// Whether the peer's call may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It is now owed an answer.
    Admitted,
    /// The table is full: answer [`ErrorCode::BUSY`].
    Busy,
    /// Its id is already in flight: a protocol error.
    Duplicate,
}

/// The peer's calls this side owes an answer.
#[derive(Debug, Clone)]
pub(crate) struct Answers<const N: usize> {
    ids: [u32; N],
    len: usize,
    /// At most this many at once (`<= N`).
    limit: usize,
    /// The call handed out by the last event that has not given its
    /// token yet: answered `FAILED` at the next poll if it never does.
    pub(crate) fresh: Option<u32>,
}

impl<const N: usize> Answers<N> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            ids: [0; N],
            len: 0,
            limit: limit.min(N),
            fresh: None,
        }
    }

    fn owed(&self) -> &[u32] {
        self.ids.get(..self.len).unwrap_or_default()
    }

    pub(crate) fn admit(&mut self, id: u32) -> Admission {
        if self.owed().contains(&id) {
            Admission::Duplicate
        } else if self.len >= self.limit {
            Admission::Busy
        } else {
            self.ids[self.len] = id;
            self.len += 1;
            Admission::Admitted
        }
    }

    /// Stops owing call `id`; false when it was not owed.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        match self.owed().iter().position(|&i| i == id) {
            Some(i) => {
                self.len -= 1;
                self.ids[i] = self.ids[self.len];
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The message of an error the connection sends by itself.
pub(crate) const fn notice_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BUSY => "too many calls in flight",
        ErrorCode::SHUTTING_DOWN => "shutting down",
        _ => "call not answered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_slots_are_reclaimed_oldest_first_and_their_ids_forgotten() {
        let mut calls = Calls::<2>::new();
        let (s1, a) = calls.reserve().unwrap();
        calls.commit(s1, a, 10);
        let (s2, b) = calls.reserve().unwrap();
        calls.commit(s2, b, 20);
        assert_eq!((a, b), (1, 2));
        assert_eq!(calls.reserve(), None, "both wait");
        assert_eq!(calls.take_expired(9), None);
        assert_eq!(calls.take_expired(15), Some(1));
        assert_eq!(calls.take_expired(15), None);
        // Call 1 is abandoned: its slot goes to call 3, and 1 is forgotten.
        let (s3, c) = calls.reserve().unwrap();
        assert_eq!((s3, c), (s1, 3));
        calls.commit(s3, c, 30);
        assert_eq!(calls.complete(1), Completion::Late);
        assert_eq!(calls.complete(2), Completion::Delivered);
        // Answered already: newer than the forgotten id, so unknown.
        assert_eq!(calls.complete(2), Completion::Unknown);
        // Never issued.
        assert_eq!(calls.complete(4), Completion::Unknown);
        assert_eq!(calls.complete(0), Completion::Unknown);
        assert_eq!(calls.complete(u32::MAX), Completion::Unknown);
        assert_eq!(calls.in_flight(), 1);
        assert_eq!(calls.next_deadline(), 30);
    }

    #[test]
    fn a_late_reply_frees_an_abandoned_slot() {
        let mut calls = Calls::<1>::new();
        let (s, id) = calls.reserve().unwrap();
        calls.commit(s, id, 5);
        assert!(calls.cancel(id));
        assert!(!calls.cancel(id));
        assert_eq!(calls.in_flight(), 0);
        assert_eq!(calls.complete(id), Completion::Late);
        // Its slot is free again without forgetting anything.
        assert_eq!(calls.reserve(), Some((0, 2)));
        assert_eq!(calls.complete(id), Completion::Unknown);
    }

    #[test]
    fn answers_are_bounded_and_duplicates_caught() {
        let mut answers = Answers::<4>::new(2);
        assert_eq!(answers.admit(7), Admission::Admitted);
        assert_eq!(answers.admit(7), Admission::Duplicate);
        assert_eq!(answers.admit(8), Admission::Admitted);
        assert_eq!(answers.admit(9), Admission::Busy);
        assert!(answers.remove(7));
        assert!(!answers.remove(7));
        assert_eq!(answers.admit(9), Admission::Admitted);
        assert_eq!(answers.len(), 2);
    }
}
