//! Which new connections get a handshake slot (issue 13, item 5): a
//! connection that has not sent its hello must not keep others out.
//!
//! - **Slots.** At most `full` handshakes run at once (`--max-handshakes`),
//!   at most `per_address` of them from one address (IPv6: one /64; an
//!   eighth of the slots by default), so that a few addresses cannot take
//!   them all.
//! - **Random early drop**, as OpenSSH's `MaxStartups start:rate:full`:
//!   from `start` handshakes on, a new connection costs someone a place
//!   with probability `rate`%, rising linearly to 100% at `full`: a random
//!   connection that has not sent its hello yet if there is one (it is
//!   closed without a word and the newcomer takes its slot), otherwise the
//!   newcomer, closed at once. When every slot is taken that is always so.
//!   A device sends its hello with the last packet of the TCP handshake, so
//!   its connection waits for nothing at the server; one that stays silent
//!   can be pushed out by any newcomer, while real load (every handshake
//!   past its hello) sheds newcomers as OpenSSH does.
//! - **No slot.** A connection refused a slot because its address has its
//!   share, or because every slot is past its hello, waits for its hello to
//!   be told `busy` (at most `pending` connections, and `per_address` from
//!   one address); beyond that it is closed at once.
//! - Every connection must send its hello within the hello timeout
//!   (`--hello-timeout`, 5 s by default), slot or not.
//!
//! [`decide`] is the rule, a plain function of the counts; `Admission`
//! holds the counts and the silent connections that may be evicted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

/// The limits of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes at once (all slots).
    pub full: usize,
    /// From this many handshakes on, new connections are dropped at random.
    pub start: usize,
    /// The drop probability at `start`, in percent (100% at `full`).
    pub rate: u8,
    /// Handshakes at once from one address; also its connections waiting
    /// to be told `busy`.
    pub per_address: usize,
    /// Connections waiting to be told `busy`, server-wide.
    pub pending: usize,
}

/// What the server holds when a connection arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Handshakes with a slot.
    pub slots: usize,
    /// Of those, how many have not sent their hello.
    pub silent: usize,
    /// Handshakes with a slot from the newcomer's address.
    pub slots_of_address: usize,
    /// Connections waiting to be told `busy`.
    pub waiting: usize,
    /// Of those, from the newcomer's address.
    pub waiting_of_address: usize,
}

/// What happens to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// A slot: the login runs.
    Slot,
    /// A slot taken from a connection that has not sent its hello.
    Evict,
    /// No slot: told `busy` once its hello arrives (the reason is logged).
    Wait(&'static str),
    /// Closed at once, without reading (the reason is logged).
    Drop(&'static str),
}

/// The reason of a random early drop (logged at debug: expected under load).
pub const EARLY_DROP: &str = "random early drop";

/// The admission rule. `roll` is a random number in 0..100 (the early
/// drop's draw).
pub fn decide(limits: &Limits, c: Counts, roll: u32) -> Admit {
    let wait = |why| {
        if c.waiting < limits.pending && c.waiting_of_address < limits.per_address {
            Admit::Wait(why)
        } else {
            Admit::Drop("too many connections waiting")
        }
    };
    // (An address allowed every slot is held only by the server's limit.)
    if c.slots_of_address >= limits.per_address && limits.per_address < limits.full {
        return wait("too many handshakes from this address");
    }
    if c.slots >= limits.full {
        return if c.silent > 0 {
            Admit::Evict
        } else {
            wait("too many handshakes")
        };
    }
    // The early drop costs someone a place: a silent connection if there
    // is one, else the newcomer.
    if c.slots >= limits.start && roll < drop_percent(limits, c.slots) {
        return if c.silent > 0 {
            Admit::Evict
        } else {
            Admit::Drop(EARLY_DROP)
        };
    }
    Admit::Slot
}

/// The early drop's probability, in percent, with `slots` taken.
pub fn drop_percent(limits: &Limits, slots: usize) -> u32 {
    if slots < limits.start {
        return 0;
    }
    if slots >= limits.full || limits.full <= limits.start {
        return 100;
    }
    let rate = u32::from(limits.rate.min(100));
    let span = (limits.full - limits.start) as u64;
    let over = (slots - limits.start) as u64;
    rate + ((100 - rate) as u64 * over / span) as u32
}

#[derive(Default)]
struct PerAddress {
    slots: usize,
    waiting: usize,
}

#[derive(Default)]
struct State {
    slots: usize,
    waiting: usize,
    addresses: HashMap<IpAddr, PerAddress>,
    /// Slot holders that have not sent their hello, by ticket id.
    silent: IndexMap<u64, (CancellationToken, Option<Probe>)>,
    next_id: u64,
}

/// A second handle on a connection's socket (`dup`), to see whether bytes
/// wait in it that its task has not read yet: a hello that arrived is not
/// silence, however late the task runs.
pub(crate) type Probe = socket2::Socket;

/// Whether the connection has sent something not yet read (or closed).
fn spoke(probe: &Option<Probe>) -> bool {
    let Some(probe) = probe else { return false };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // Non-blocking like the connection: `WouldBlock` is silence; `Ok(0)` is
    // a peer that left (evicting it costs nothing).
    matches!(probe.peek(&mut byte), Ok(n) if n > 0)
}

/// How many silent connections an eviction looks at before it gives up.
const EVICTION_TRIES: usize = 8;

/// The handshake slots of a server.
pub(crate) struct Admission {
    /// Read at each admission: a reload changes them for the next one.
    limits: Mutex<Limits>,
    state: Mutex<State>,
}

/// A connection's place: a slot or a wait, held until dropped.
pub(crate) struct Ticket {
    owner: Arc<Admission>,
    key: IpAddr,
    id: u64,
    slot: bool,
    /// Cancelled when the slot is given to a newcomer.
    pub(crate) evicted: CancellationToken,
}

/// What [`Admission::admit`] decided.
pub(crate) enum Admitted {
    /// A slot (`true`: another connection was evicted for it).
    Slot(Ticket, bool),
    /// No slot: to be told `busy` with this reason after its hello.
    Wait(Ticket, &'static str),
    /// Closed at once, for this reason.
    Drop(&'static str),
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits: Mutex::new(limits),
            state: Mutex::new(State::default()),
        }
    }

    /// New limits, for the connections that arrive from now on; the slots
    /// and waits already given are kept (a lower limit admits no one
    /// until enough of them have ended).
    pub(crate) fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Admits a connection from `key` (the address key); `probe` sees
    /// whether it has spoken.
    pub(crate) fn admit(self: &Arc<Self>, key: IpAddr, probe: Option<Probe>) -> Admitted {
        let roll = rand::random_range(0..100u32);
        let limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let of = st.addresses.get(&key);
        let counts = Counts {
            slots: st.slots,
            silent: st.silent.len(),
            slots_of_address: of.map_or(0, |a| a.slots),
            waiting: st.waiting,
            waiting_of_address: of.map_or(0, |a| a.waiting),
        };
        let mut decision = decide(&limits, counts, roll);
        if decision == Admit::Evict && !evict_one(&mut st.silent) {
            // Every one looked at had spoken: decide as if none were silent.
            let counts = Counts {
                silent: 0,
                ..counts
            };
            decision = decide(&limits, counts, roll);
        }
        let (slot, evicted) = match decision {
            Admit::Drop(why) => return Admitted::Drop(why),
            Admit::Wait(_) => (false, false),
            // The victim keeps its count until its task has closed the
            // connection (at once); the newcomer counts from now.
            Admit::Evict => (true, true),
            Admit::Slot => (true, false),
        };
        st.next_id += 1;
        let id = st.next_id;
        let token = CancellationToken::new();
        let entry = st.addresses.entry(key).or_default();
        if slot {
            entry.slots += 1;
            st.slots += 1;
            st.silent.insert(id, (token.clone(), probe));
        } else {
            entry.waiting += 1;
            st.waiting += 1;
        }
        drop(st);
        let ticket = Ticket {
            owner: self.clone(),
            key,
            id,
            slot,
            evicted: token,
        };
        match decision {
            Admit::Wait(why) => Admitted::Wait(ticket, why),
            _ => Admitted::Slot(ticket, evicted),
        }
    }

    /// Handshakes holding a slot now, and how many of them are silent.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.slots, st.silent.len(), st.waiting)
    }
}

/// Closes a random silent connection (its task sees its token cancelled);
/// one found to have spoken leaves the silent set instead. `false`: none
/// closed.
fn evict_one(silent: &mut IndexMap<u64, (CancellationToken, Option<Probe>)>) -> bool {
    for _ in 0..EVICTION_TRIES {
        if silent.is_empty() {
            return false;
        }
        let i = rand::random_range(0..silent.len());
        let spoke = spoke(&silent[i].1);
        let (_, (token, _)) = silent.swap_remove_index(i).expect("in range");
        if !spoke {
            token.cancel();
            return true;
        }
    }
    false
}

impl Ticket {
    /// The hello arrived: this connection can no longer be evicted.
    pub(crate) fn hello_received(&self) {
        if self.slot {
            let mut st = self.owner.state.lock().unwrap_or_else(|p| p.into_inner());
            st.silent.swap_remove(&self.id);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.owner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.silent.swap_remove(&self.id);
        if self.slot {
            st.slots -= 1;
        } else {
            st.waiting -= 1;
        }
        if let Some(a) = st.addresses.get_mut(&self.key) {
            if self.slot {
                a.slots -= 1;
            } else {
                a.waiting -= 1;
            }
            if a.slots == 0 && a.waiting == 0 {
                st.addresses.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        full: 64,
        start: 32,
        rate: 30,
        per_address: 8,
        pending: 256,
    };

    fn counts(slots: usize, silent: usize, of_address: usize) -> Counts {
        Counts {
            slots,
            silent,
            slots_of_address: of_address,
            ..Counts::default()
        }
    }

    #[test]
    fn early_drop_rises_from_rate_at_start_to_all_at_full() {
        assert_eq!(drop_percent(&LIMITS, 0), 0);
        assert_eq!(drop_percent(&LIMITS, 31), 0);
        assert_eq!(drop_percent(&LIMITS, 32), 30);
        assert_eq!(drop_percent(&LIMITS, 48), 65);
        assert_eq!(drop_percent(&LIMITS, 63), 97);
        assert_eq!(drop_percent(&LIMITS, 64), 100);
        // Below start every roll gets a slot; at 48 taken, 65 of 100 rolls drop.
        for roll in 0..100 {
            assert_eq!(decide(&LIMITS, counts(31, 0, 0), roll), Admit::Slot);
        }
        let dropped = (0..100)
            .filter(|r| matches!(decide(&LIMITS, counts(48, 0, 0), *r), Admit::Drop(_)))
            .count();
        assert_eq!(dropped, 65);
        // With silent connections, those rolls evict one of them instead.
        let evicting = (0..100)
            .filter(|r| decide(&LIMITS, counts(48, 5, 0), *r) == Admit::Evict)
            .count();
        assert_eq!(evicting, 65);
    }

    #[test]
    fn a_full_server_evicts_a_silent_connection_or_makes_the_newcomer_wait() {
        assert_eq!(decide(&LIMITS, counts(64, 1, 0), 99), Admit::Evict);
        assert_eq!(
            decide(&LIMITS, counts(64, 0, 0), 99),
            Admit::Wait("too many handshakes")
        );
        let mut c = counts(64, 0, 0);
        c.waiting = 256;
        assert!(matches!(decide(&LIMITS, c, 99), Admit::Drop(_)));
    }

    #[test]
    fn an_address_with_its_share_waits_and_never_evicts() {
        assert_eq!(
            decide(&LIMITS, counts(10, 10, 8), 99),
            Admit::Wait("too many handshakes from this address")
        );
        assert_eq!(
            decide(&LIMITS, counts(64, 10, 8), 99),
            Admit::Wait("too many handshakes from this address")
        );
        let mut c = counts(10, 0, 8);
        c.waiting_of_address = 8;
        assert!(matches!(decide(&LIMITS, c, 99), Admit::Drop(_)));
    }

    #[test]
    fn tickets_count_and_evict() {
        let a = Arc::new(Admission::new(Limits {
            full: 3,
            start: 3,
            rate: 0,
            per_address: 2,
            pending: 1,
        }));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let Admitted::Slot(first, false) = a.admit(ip, None) else {
            panic!()
        };
        let Admitted::Slot(second, false) = a.admit(ip, None) else {
            panic!()
        };
        second.hello_received();
        assert_eq!(a.counts(), (2, 1, 0));
        // The address has its share: it waits.
        let Admitted::Wait(waiting, _) = a.admit(ip, None) else {
            panic!()
        };
        assert_eq!(a.counts(), (2, 1, 1));
        let Admitted::Slot(third, false) = a.admit(other, None) else {
            panic!()
        };
        third.hello_received();
        // Full: the silent one is evicted for the newcomer.
        let Admitted::Slot(fourth, true) = a.admit(other, None) else {
            panic!()
        };
        assert!(first.evicted.is_cancelled() && !second.evicted.is_cancelled());
        // The evicted one keeps its count until its task drops its ticket.
        assert_eq!(a.counts(), (4, 1, 1));
        drop(first);
        assert_eq!(a.counts(), (3, 1, 1));
        // Full, nothing silent to evict, one waiting already: dropped.
        fourth.hello_received();
        assert!(matches!(a.admit(other, None), Admitted::Drop(_)));
        drop((second, third, fourth, waiting));
        assert_eq!(a.counts(), (0, 0, 0));
        assert!(a.state.lock().unwrap().addresses.is_empty());
    }

    #[test]
    fn a_connection_whose_hello_waits_unread_is_not_evicted() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut quiet = std::net::TcpStream::connect(addr).unwrap();
        let (quiet_srv, _) = listener.accept().unwrap();
        let mut talker = std::net::TcpStream::connect(addr).unwrap();
        let (talker_srv, _) = listener.accept().unwrap();
        for s in [&quiet_srv, &talker_srv] {
            s.set_nonblocking(true).unwrap();
        }
        talker.write_all(b"\x00\x26hello").unwrap();
        let probe = |s: &std::net::TcpStream| Some(socket2::SockRef::from(s).try_clone().unwrap());
        // The bytes take a moment to arrive on loopback.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !spoke(&probe(&talker_srv)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the hello never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!spoke(&probe(&quiet_srv)));
        // Only the talker is in the set: it is let go, nobody is evicted.
        let mut silent = IndexMap::new();
        let token = CancellationToken::new();
        silent.insert(1, (token.clone(), probe(&talker_srv)));
        assert!(!evict_one(&mut silent));
        assert!(silent.is_empty() && !token.is_cancelled());
        // The quiet one is evicted.
        silent.insert(2, (token.clone(), probe(&quiet_srv)));
        assert!(evict_one(&mut silent));
        assert!(token.is_cancelled());
        quiet.write_all(b"late").unwrap();
    }
}
