//! How many sessions one account may hold (issue 13, item 9): one account
//! opened 1,008 sessions. At most `--max-sessions-per-user` (default 8)
//! run at once; a login beyond that either replaces the account's oldest
//! session (it gets `Goodbye { Replaced }`; the default, so that a device
//! that reconnects before its old session timed out is never locked out)
//! or is refused `busy` (`--sessions-per-user-policy refuse`).
//!
//! [`decide`] is the rule, a plain function of the account's live
//! sessions; the server applies it under the lock of its registry of live
//! sessions, so that logins at once cannot all slip in.

/// What a login beyond the cap does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// The account's oldest sessions are closed with `Goodbye { Replaced }`.
    #[default]
    ReplaceOldest,
    /// The new login is refused `busy`.
    Refuse,
}

/// What to do with a new session of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs beside the others.
    Admit,
    /// It runs; these sessions (ids, oldest first) are closed.
    Replace(Vec<u64>),
    /// It is refused `busy`.
    Refuse,
}

/// The decision for a new session of an account whose live sessions (not
/// already being closed) are `live`, oldest first; `cap` 0: no limit.
pub fn decide(live: &[u64], cap: usize, policy: Policy) -> Decision {
    if cap == 0 || live.len() < cap {
        return Decision::Admit;
    }
    match policy {
        Policy::Refuse => Decision::Refuse,
        Policy::ReplaceOldest => Decision::Replace(live[..=live.len() - cap].to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_cap_everyone_runs_at_it_the_oldest_go_or_the_newcomer_is_refused() {
        let policy = Policy::ReplaceOldest;
        assert_eq!(decide(&[], 8, policy), Decision::Admit);
        assert_eq!(decide(&[1, 2, 3], 8, policy), Decision::Admit);
        let eight: Vec<u64> = (1..=8).collect();
        assert_eq!(decide(&eight, 8, policy), Decision::Replace(vec![1]));
        // Over the cap (it was lowered): enough go to make room for one.
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(decide(&ten, 8, policy), Decision::Replace(vec![1, 2, 3]));
        assert_eq!(decide(&eight, 8, Policy::Refuse), Decision::Refuse);
        assert_eq!(decide(&ten, 0, Policy::Refuse), Decision::Admit);
        assert_eq!(decide(&[5], 1, policy), Decision::Replace(vec![5]));
    }
}
