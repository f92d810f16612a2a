//! The two call tables of a connection: this side's calls waiting for
//! replies ([`Calls`]) and the peer's calls this side owes an answer
//! ([`Answers`]). Each is bounded by a const generic; where its slots live
//! is the connection's [`Tables`]: a fixed array ([`Fixed`], the default,
//! no allocation) or, with the `alloc` feature, a vector that grows on
//! demand up to the same bound, whose storage the driver frees when the
//! connection is quiet (`Growable`, for a server holding many idle
//! sessions; `Connection::release_tables`).
//!
//! Policy (module docs of [`super`] say it for users):
//! - Ids are issued in order from 1 (0 is never used), wrapping.
//! - Every call has a deadline. Once past it is reported
//!   ([`Calls::take_expired`]) the call is *abandoned*, and so is a call the
//!   application cancels. An abandoned call keeps its slot
//!   until its late reply comes (dropped quietly) or a new call needs the
//!   slot and the table is at its bound: the oldest abandoned slot is then
//!   reclaimed and its id *forgotten*. No slot stays taken for ever,
//!   whatever the peer does.
//! - A reply to an id not in the table is late (dropped) when it is no
//!   newer than the newest forgotten id and was issued; otherwise it was
//!   never asked or was answered already: a protocol error.

use crate::message::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
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

/// Where a connection keeps its call tables (see [`Connection`](super::Connection)):
/// [`Fixed`] or, with the `alloc` feature, `Growable`. Sealed.
pub trait Tables: Sealed + core::fmt::Debug + 'static {
    #[doc(hidden)]
    type Slots<const N: usize>: Store<Slot>;
    #[doc(hidden)]
    type Ids<const N: usize>: Store<u32>;
}

/// Call tables of a fixed size: every slot exists from the start (the
/// bound's worth of memory), nothing is allocated. The default, and the
/// only choice without the `alloc` feature (a device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fixed;

impl Sealed for Fixed {}

impl Tables for Fixed {
    type Slots<const N: usize> = [Slot; N];
    type Ids<const N: usize> = [u32; N];
}

/// Call tables that grow on demand, one slot at a time, up to the same
/// bound as [`Fixed`] (the connection's `CALLS` and `ANSWERS`); their
/// storage is freed by
/// [`Connection::release_tables`](super::Connection::release_tables) when
/// no call is in flight, so a quiet connection holds no table (feature
/// `alloc`; for a server holding many idle sessions).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Growable;

#[cfg(feature = "alloc")]
impl Sealed for Growable {}

#[cfg(feature = "alloc")]
impl Tables for Growable {
    type Slots<const N: usize> = Bounded<Slot, N>;
    type Ids<const N: usize> = Bounded<u32, N>;
}

/// Seals [`Tables`].
pub trait Sealed {}

/// The slots of one table (implemented by [`Fixed`]'s arrays and
/// `Growable`'s vectors only).
pub trait Store<T>: core::fmt::Debug + Clone {
    /// Whether slots are added by [`grow`](Self::grow) (else they all
    /// exist from the start).
    const GROWS: bool;
    /// An empty table: every slot `empty` (or none yet).
    fn new(empty: T) -> Self;
    /// The slots that exist.
    fn slots(&self) -> &[T];
    /// The slots that exist.
    fn slots_mut(&mut self) -> &mut [T];
    /// Adds a slot holding `empty` below the bound; its index.
    fn grow(&mut self, empty: T) -> Option<usize>;
    /// Every slot is unused: the storage may go.
    fn release(&mut self);
}

impl<T: Copy + core::fmt::Debug, const N: usize> Store<T> for [T; N] {
    const GROWS: bool = false;
    fn new(empty: T) -> Self {
        [empty; N]
    }
    fn slots(&self) -> &[T] {
        self
    }
    fn slots_mut(&mut self) -> &mut [T] {
        self
    }
    fn grow(&mut self, _: T) -> Option<usize> {
        None
    }
    fn release(&mut self) {}
}

/// A vector of at most `N` slots (allocated on the first).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone)]
pub struct Bounded<T, const N: usize>(alloc::vec::Vec<T>);

#[cfg(feature = "alloc")]
impl<T: Copy + core::fmt::Debug, const N: usize> Store<T> for Bounded<T, N> {
    const GROWS: bool = true;
    fn new(_: T) -> Self {
        Self(alloc::vec::Vec::new())
    }
    fn slots(&self) -> &[T] {
        &self.0
    }
    fn slots_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
    fn grow(&mut self, empty: T) -> Option<usize> {
        let i = self.0.len();
        (i < N).then(|| self.0.push(empty)).map(|()| i)
    }
    fn release(&mut self) {
        self.0 = alloc::vec::Vec::new();
    }
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

/// This side's calls in flight, at most `N`.
#[derive(Debug, Clone)]
pub(crate) struct Calls<S, const N: usize> {
    slots: S,
    next_id: u32,
    /// Ids issued so far (saturating): an older id was never issued.
    issued: u32,
    /// The newest id whose abandoned slot was reclaimed.
    forgotten: Option<u32>,
}

impl<S: Store<Slot>, const N: usize> Calls<S, N> {
    pub(crate) fn new() -> Self {
        Self {
            slots: S::new(Slot::Free),
            next_id: 1,
            issued: 0,
            forgotten: None,
        }
    }

    /// How many ids ago `id` was issued (1: the last one).
    fn age(&self, id: u32) -> u32 {
        self.next_id.wrapping_sub(id)
    }

    /// A free slot and the id of the next call: a free slot, else a new
    /// one below the bound, else the oldest abandoned slot reclaimed.
    /// `None`: every slot waits for a reply.
    pub(crate) fn reserve(&mut self) -> Option<(usize, u32)> {
        let free = self.slots.slots().iter().position(|s| *s == Slot::Free);
        let slot = match free.or_else(|| self.slots.grow(Slot::Free)) {
            Some(i) => i,
            None => {
                let mut oldest: Option<(usize, u32)> = None;
                for (i, s) in self.slots.slots().iter().enumerate() {
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
                self.slots.slots_mut()[i] = Slot::Free;
                i
            }
        };
        Some((slot, self.next_id))
    }

    /// Puts the call `id` (from [`Self::reserve`]) in flight.
    pub(crate) fn commit(&mut self, slot: usize, id: u32, deadline: u64) {
        if let Some(s) = self.slots.slots_mut().get_mut(slot) {
            *s = Slot::Waiting { id, deadline };
        }
        self.next_id = id.wrapping_add(1).max(1);
        self.issued = self.issued.saturating_add(1);
    }

    /// A reply (or error) for `id` arrived.
    pub(crate) fn complete(&mut self, id: u32) -> Completion {
        for s in self.slots.slots_mut() {
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
        for s in self.slots.slots_mut() {
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
        for s in self.slots.slots_mut() {
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
        for s in self.slots.slots() {
            if let Slot::Waiting { deadline, .. } = *s {
                next = next.min(deadline);
            }
        }
        next
    }

    /// Frees the slots' storage if every slot is free (growable tables).
    pub(crate) fn release_if_empty(&mut self) {
        if S::GROWS && self.slots.slots().iter().all(|s| *s == Slot::Free) {
            self.slots.release();
        }
    }

    /// Calls waiting for a reply (those past their deadline and not yet
    /// reported included).
    pub(crate) fn in_flight(&self) -> usize {
        self.slots
            .slots()
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

/// The peer's calls this side owes an answer, at most `N`.
#[derive(Debug, Clone)]
pub(crate) struct Answers<S, const N: usize> {
    /// The ids owed are the first `len`.
    ids: S,
    len: usize,
    /// At most this many at once (`<= N`).
    limit: usize,
    /// The call handed out by the last event that has not given its
    /// token yet: answered `FAILED` at the next poll if it never does.
    pub(crate) fresh: Option<u32>,
}

impl<S: Store<u32>, const N: usize> Answers<S, N> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            ids: S::new(0),
            len: 0,
            limit: limit.min(N),
            fresh: None,
        }
    }

    fn owed(&self) -> &[u32] {
        self.ids.slots().get(..self.len).unwrap_or_default()
    }

    pub(crate) fn admit(&mut self, id: u32) -> Admission {
        if self.owed().contains(&id) {
            return Admission::Duplicate;
        }
        if self.len >= self.limit
            || (self.len == self.ids.slots().len() && self.ids.grow(0).is_none())
        {
            return Admission::Busy;
        }
        if let Some(slot) = self.ids.slots_mut().get_mut(self.len) {
            *slot = id;
        }
        self.len += 1;
        Admission::Admitted
    }

    /// Stops owing call `id`; false when it was not owed.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        match self.owed().iter().position(|&i| i == id) {
            Some(i) => {
                self.len -= 1;
                let ids = self.ids.slots_mut();
                ids[i] = ids[self.len];
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Frees the ids' storage if none is owed (growable tables).
    pub(crate) fn release_if_empty(&mut self) {
        if S::GROWS && self.len == 0 {
            self.ids.release();
        }
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
        let mut calls = Calls::<[Slot; 2], 2>::new();
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
        let mut calls = Calls::<[Slot; 1], 1>::new();
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
        let mut answers = Answers::<[u32; 4], 4>::new(2);
        assert_eq!(answers.admit(7), Admission::Admitted);
        assert_eq!(answers.admit(7), Admission::Duplicate);
        assert_eq!(answers.admit(8), Admission::Admitted);
        assert_eq!(answers.admit(9), Admission::Busy);
        assert!(answers.remove(7));
        assert!(!answers.remove(7));
        assert_eq!(answers.admit(9), Admission::Admitted);
        assert_eq!(answers.len(), 2);
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn growable_tables_grow_to_their_bound_and_are_freed_when_empty() {
        type Slots = <Growable as Tables>::Slots<3>;
        let mut calls = Calls::<Slots, 3>::new();
        assert!(
            calls.slots.slots().is_empty(),
            "nothing before the first call"
        );
        let mut ids = [0; 3];
        for (k, id) in ids.iter_mut().enumerate() {
            let (slot, i) = calls.reserve().unwrap();
            assert_eq!(slot, k);
            calls.commit(slot, i, 10);
            *id = i;
        }
        assert_eq!(calls.slots.slots().len(), 3);
        assert_eq!(calls.reserve(), None, "at its bound, every slot waits");
        // Abandoned at its bound: reclaimed, as in a fixed table.
        assert_eq!(calls.take_expired(10), Some(ids[0]));
        let (slot, i) = calls.reserve().unwrap();
        assert_eq!(slot, 0);
        calls.commit(slot, i, 20);
        assert_eq!(calls.complete(ids[0]), Completion::Late);
        for id in [ids[1], ids[2], i] {
            assert_eq!(calls.complete(id), Completion::Delivered);
        }
        assert_eq!(calls.slots.slots().len(), 3, "kept while busy");
        calls.release_if_empty();
        assert!(calls.slots.slots().is_empty(), "freed once empty");
        assert_eq!(calls.reserve().map(|(s, _)| s), Some(0));

        let mut answers = Answers::<<Growable as Tables>::Ids<4>, 4>::new(8);
        assert_eq!(answers.limit, 4, "capped by the bound");
        for id in 1..=4 {
            assert_eq!(answers.admit(id), Admission::Admitted);
        }
        assert_eq!(answers.admit(5), Admission::Busy);
        assert_eq!(answers.admit(2), Admission::Duplicate);
        for id in 1..=4 {
            assert!(answers.remove(id));
        }
        assert_eq!(answers.len(), 0);
        answers.release_if_empty();
        assert!(answers.ids.slots().is_empty(), "freed once empty");
    }
}
