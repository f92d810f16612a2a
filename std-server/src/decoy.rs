//! Which challenge a login gets: the account's own verifier, or a decoy
//! that looks like one. Plain functions of the hello, the row and the
//! server secret (no I/O), so the rule can move into tether-core's state
//! machine as it is.
//!
//! An outsider must not learn from the server's answers whether an account
//! exists, is active or allowed in, which hash its row holds or which
//! mechanism it needs (docs/PROTOCOL.md, "Refusal codes"). So:
//!
//! - `unsupported` is sent only when the hello offers no mechanism this
//!   server runs ([`runnable`]): decided from the hello alone, before any
//!   lookup.
//! - Every username has a *shape*: a mechanism, a salt and an iteration
//!   count. A `pbkdf2_*` or `scram_sha256` row's shape is its own, whether or not the user
//!   may log in. Any other username (unknown, or a row whose hash cannot
//!   do SCRAM: argon2, bcrypt, scrypt, md5, unusable, malformed) gets a
//!   virtual shape: the salt from the secret and the username
//!   ([`ServerCredentials::decoy_salt`]), the mechanism and iteration count
//!   drawn by a number from the secret and the username ([`draw`]) among
//!   the shares the real rows have ([`DecoyMix`]). So a username is stable
//!   like a real row, and decoys are spread over mechanisms and counts the
//!   way rows are.
//! - The challenge is in the shape's mechanism when the client offered
//!   it, otherwise in the mechanism it offered, always with the shape's
//!   salt and count: the same for a real row and a decoy.
//! - Only an account that may log in, challenged in its row's mechanism,
//!   gets its real verifier. Every other login gets keys no proof matches
//!   ([`ServerCredentials::decoy_keys`]) and ends `unauthorized` after the
//!   proof, counted as a failure like a wrong password; the reason
//!   ([`DecoyReason`]) is logged on the server only.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{KeyInit as _, Mac as _};
use tether_core::django::{self, DjangoHashError, HashAlgorithm};
use tether_core::scram::{Mechanism, Mechanisms, ServerCredentials};

/// The mechanisms this server runs.
const RUNNABLE: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha1];

/// Whether the hello offers a mechanism this server runs; if not, the
/// login is refused `unsupported` (the only case: it depends on nothing
/// but the hello).
pub fn runnable(offered: Mechanisms) -> bool {
    RUNNABLE.iter().any(|m| offered.contains(*m))
}

/// Shares are counted in 1/`SCALE`.
pub const SCALE: u32 = 1024;

/// The mechanisms and iteration counts of the real `pbkdf2_*` rows, as
/// shares in 1/1024, from which virtual shapes are drawn. Rounding keeps a
/// username's draw stable while the table grows: a share moves only when
/// its rounded value does. A (mechanism, count) held by fewer than 1 row in
/// 1,024 may never be drawn (a row that rare stands out by its count
/// whatever decoys do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoyMix {
    /// (mechanism, iterations, cumulative share up to and including it).
    entries: Vec<(Mechanism, u32, u32)>,
}

impl DecoyMix {
    /// Every virtual shape in SCRAM-SHA-256 at `iterations`: until the
    /// rows are counted, or when there are none.
    pub fn only(iterations: u32) -> Self {
        Self {
            entries: vec![(Mechanism::ScramSha256, iterations, SCALE)],
        }
    }

    /// The shares of these row counts (largest remainder rounding, so the
    /// shares add up to 1024); `None` when there are no rows.
    pub fn from_counts(counts: &BTreeMap<(Mechanism, u32), u64>) -> Option<Self> {
        let total: u128 = counts.values().map(|n| *n as u128).sum();
        if total == 0 {
            return None;
        }
        // (key, floor share, remainder)
        let mut parts: Vec<((Mechanism, u32), u32, u128)> = counts
            .iter()
            .map(|(k, n)| {
                let exact = *n as u128 * SCALE as u128;
                (*k, (exact / total) as u32, exact % total)
            })
            .collect();
        let mut left = SCALE - parts.iter().map(|p| p.1).sum::<u32>();
        let mut order: Vec<usize> = (0..parts.len()).collect();
        // Largest remainder first; ties by key, so the result is stable.
        order.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2).then(a.cmp(b)));
        for i in order {
            if left == 0 {
                break;
            }
            if parts[i].2 > 0 {
                parts[i].1 += 1;
                left -= 1;
            }
        }
        let mut upto = 0;
        let entries = parts
            .into_iter()
            .filter(|p| p.1 > 0)
            .map(|((m, i), share, _)| {
                upto += share;
                (m, i, upto)
            })
            .collect();
        Some(Self { entries })
    }

    /// The (mechanism, iterations) at `point` (0..1024).
    pub fn pick(&self, point: u32) -> (Mechanism, u32) {
        let point = point % SCALE;
        let (m, i, _) = self
            .entries
            .iter()
            .find(|(_, _, upto)| point < *upto)
            .or(self.entries.last())
            .copied()
            .unwrap_or((Mechanism::ScramSha256, 1, SCALE));
        (m, i)
    }

    /// The shares: (mechanism, iterations, share in 1/1024).
    pub fn shares(&self) -> impl Iterator<Item = (Mechanism, u32, u32)> + '_ {
        let mut from = 0;
        self.entries.iter().map(move |(m, i, upto)| {
            let share = upto - from;
            from = *upto;
            (*m, *i, share)
        })
    }
}

impl fmt::Display for DecoyMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (m, i, share)) in self.shares().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m} at {i}: {share}/{SCALE}")?;
        }
        Ok(())
    }
}

/// A username's point in 0..1024, from the secret: which virtual shape it
/// gets (stable across attempts and restarts, unguessable without the
/// secret).
pub fn draw(secret: &[u8], username: &str) -> u32 {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    for part in [b"tether/1 decoy mix".as_slice(), &[0], username.as_bytes()] {
        mac.update(part);
    }
    let out = mac.finalize().into_bytes();
    u32::from_be_bytes([out[0], out[1], out[2], out[3]]) % SCALE
}

/// What the lookup found, as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// Django's encoded hash.
    pub password: &'a str,
    /// Active, and holds the required permission and group.
    pub may_log_in: bool,
    /// Whether the row is active (for the log line only).
    pub is_active: bool,
}

/// Why a login gets a decoy (logged on the server, never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoyReason {
    /// No such username.
    UnknownUser,
    /// The row is inactive.
    Inactive,
    /// Active, but without the required permission or group.
    NotAllowed,
    /// The row's hash needs this mechanism, which the client did not offer.
    OtherMechanism(Mechanism),
    /// The row's hash cannot do SCRAM.
    UnsupportedHash(HashAlgorithm),
    /// The row looks like a PBKDF2 hash but does not parse.
    MalformedHash(DjangoHashError),
    /// The name stored in the row (another spelling of the typed one) is
    /// throttled.
    Throttled,
}

impl DecoyReason {
    /// The refusal's reason as logged in the `reason` field: `unknown_user`,
    /// `inactive`, `permission`, `other_mechanism`, `unsupported_hash`,
    /// `malformed_hash` or `throttled` (a wrong password is `wrong_proof`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::Inactive => "inactive",
            Self::NotAllowed => "permission",
            Self::OtherMechanism(_) => "other_mechanism",
            Self::UnsupportedHash(_) => "unsupported_hash",
            Self::MalformedHash(_) => "malformed_hash",
            Self::Throttled => "throttled",
        }
    }
}

impl fmt::Display for DecoyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownUser => f.write_str("unknown user"),
            Self::Inactive => f.write_str("inactive user"),
            Self::NotAllowed => f.write_str("user lacks the required permission or group"),
            Self::OtherMechanism(m) => write!(
                f,
                "the account's hash needs {m}, which the client did not offer"
            ),
            Self::UnsupportedHash(a) => {
                write!(f, "the account's password hash is {a}: {}", a.advice())
            }
            Self::MalformedHash(e) => write!(f, "{e}: set the password again in Django"),
            Self::Throttled => f.write_str("too many failed logins for the name stored in the row"),
        }
    }
}

/// The challenge to send: its verifier, and why it is a decoy (`None`: the
/// account's own).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The verifier (mechanism, salt, iterations, keys).
    pub credentials: ServerCredentials,
    /// `Some`: no proof can pass; the login ends `unauthorized`.
    pub decoy: Option<DecoyReason>,
}

/// Decides the challenge of a login (see the module's rules). `offered`
/// must be [`runnable`]; `username` is the name the client sent.
pub fn plan(
    offered: Mechanisms,
    account: Option<Account<'_>>,
    username: &str,
    secret: &[u8],
    mix: &DecoyMix,
) -> Plan {
    let parsed = account.map(|a| (a, django::credentials(a.password)));
    // The shape: the row's own when it is PBKDF2, else a virtual one.
    let (shape, real) = match &parsed {
        Some((a, Ok(c))) => (
            (c.mechanism, c.salt.clone(), c.iterations),
            a.may_log_in.then_some(c),
        ),
        _ => {
            let (m, i) = mix.pick(draw(secret, username));
            (
                (m, ServerCredentials::decoy_salt(secret, username), i),
                None,
            )
        }
    };
    let (shape_mechanism, salt, iterations) = shape;
    let mechanism = if offered.contains(shape_mechanism) {
        shape_mechanism
    } else {
        RUNNABLE
            .into_iter()
            .find(|m| offered.contains(*m))
            .unwrap_or(shape_mechanism)
    };
    if let Some(real) = real
        && real.mechanism == mechanism
    {
        return Plan {
            credentials: real.clone(),
            decoy: None,
        };
    }
    let reason = match parsed {
        None => DecoyReason::UnknownUser,
        Some((_, Err(DjangoHashError::Unsupported(a)))) => DecoyReason::UnsupportedHash(a),
        Some((_, Err(e))) => DecoyReason::MalformedHash(e),
        Some((a, Ok(_))) if !a.is_active => DecoyReason::Inactive,
        Some((a, Ok(_))) if !a.may_log_in => DecoyReason::NotAllowed,
        Some((_, Ok(c))) => DecoyReason::OtherMechanism(c.mechanism),
    };
    let credentials = ServerCredentials::decoy_keys(mechanism, secret, username, &salt, iterations)
        .expect("the salt came from a verifier");
    Plan {
        credentials,
        decoy: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"decoy test secret";
    const SHA256: Mechanism = Mechanism::ScramSha256;
    const SHA1: Mechanism = Mechanism::ScramSha1;
    const BOTH: Mechanisms = Mechanisms::ALL;

    fn only(m: Mechanism) -> Mechanisms {
        Mechanisms::only(m)
    }

    fn row(m: Mechanism, iterations: u32, salt: &str) -> String {
        let name = match m {
            SHA256 => "pbkdf2_sha256",
            SHA1 => "pbkdf2_sha1",
        };
        let key = vec![7u8; m.key_len()];
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        format!("{name}${iterations}${salt}${b64}")
    }

    fn account(password: &str, active: bool, allowed: bool) -> Account<'_> {
        Account {
            password,
            may_log_in: active && allowed,
            is_active: active,
        }
    }

    fn mix() -> DecoyMix {
        let mut counts = BTreeMap::new();
        counts.insert((SHA256, 1_000_000), 700);
        counts.insert((SHA256, 600_000), 200);
        counts.insert((SHA1, 1_000_000), 100);
        DecoyMix::from_counts(&counts).unwrap()
    }

    /// What an outsider sees of a challenge.
    fn seen(p: &Plan) -> (Mechanism, Vec<u8>, u32) {
        let c = &p.credentials;
        (c.mechanism, c.salt.to_vec(), c.iterations)
    }

    #[test]
    fn unsupported_only_without_a_runnable_mechanism() {
        assert!(runnable(BOTH));
        assert!(runnable(only(SHA1)));
        assert!(runnable(Mechanisms::from_bits(1 | 4)));
        assert!(!runnable(Mechanisms::from_bits(0)));
        assert!(!runnable(Mechanisms::from_bits(4 | 8 | 128)));
    }

    #[test]
    fn real_rows_get_their_verifier_in_their_mechanism_only() {
        let sha256 = row(SHA256, 600_000, "abcdefghijklmnopqrstuv");
        let sha1 = row(SHA1, 1_000_000, "ABCDEFGHIJKLMNOPQRSTUV");
        let m = mix();
        for (hash, mech) in [(&sha256, SHA256), (&sha1, SHA1)] {
            let a = Some(account(hash, true, true));
            let real = django::credentials(hash).unwrap();
            // Offered both, or its own: the row's verifier.
            for offered in [BOTH, only(mech)] {
                let p = plan(offered, a, "u", SECRET, &m);
                assert_eq!(p.decoy, None);
                assert_eq!(p.credentials, real);
            }
            // Offered only the other: a decoy in that one, same salt and count.
            let other = if mech == SHA256 { SHA1 } else { SHA256 };
            let p = plan(only(other), a, "u", SECRET, &m);
            assert_eq!(p.decoy, Some(DecoyReason::OtherMechanism(mech)));
            assert_eq!(seen(&p), (other, real.salt.to_vec(), real.iterations));
            assert_ne!(p.credentials.stored_key, real.stored_key);
        }
    }

    #[test]
    fn accounts_that_cannot_log_in_show_the_shape_of_their_row() {
        let hash = row(SHA1, 1_000_000, "ABCDEFGHIJKLMNOPQRSTUV");
        let real = django::credentials(&hash).unwrap();
        let m = mix();
        for (a, why) in [
            (account(&hash, false, true), DecoyReason::Inactive),
            (account(&hash, true, false), DecoyReason::NotAllowed),
        ] {
            for offered in [BOTH, only(SHA1), only(SHA256)] {
                let p = plan(offered, Some(a), "u", SECRET, &m);
                assert_eq!(p.decoy.as_ref(), Some(&why));
                let mech = if offered == only(SHA256) {
                    SHA256
                } else {
                    SHA1
                };
                assert_eq!(seen(&p), (mech, real.salt.to_vec(), real.iterations));
                assert_ne!(p.credentials.stored_key, real.stored_key);
            }
        }
    }

    #[test]
    fn every_other_username_gets_a_stable_virtual_shape() {
        let m = mix();
        let argon2 = "argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdA$aGFzaA";
        let malformed = "pbkdf2_sha256$x$salt$hash";
        let cases: [(Option<Account<'_>>, DecoyReason); 4] = [
            (None, DecoyReason::UnknownUser),
            (
                Some(account(argon2, true, true)),
                DecoyReason::UnsupportedHash(HashAlgorithm::Argon2),
            ),
            (Some(account("!unusable", true, true)), {
                DecoyReason::UnsupportedHash(HashAlgorithm::Unusable)
            }),
            (Some(account(malformed, true, true)), {
                let Err(e) = django::credentials(malformed) else {
                    unreachable!()
                };
                DecoyReason::MalformedHash(e)
            }),
        ];
        for name in ["nobody", "carol", "x"] {
            let (mech, iterations) = m.pick(draw(SECRET, name));
            let salt = ServerCredentials::decoy_salt(SECRET, name).to_vec();
            for (a, why) in &cases {
                let both = plan(BOTH, *a, name, SECRET, &m);
                assert_eq!(both.decoy.as_ref(), Some(why));
                // The same whatever the row holds: only the name counts.
                assert_eq!(seen(&both), (mech, salt.clone(), iterations));
                for one in [SHA256, SHA1] {
                    let p = plan(only(one), *a, name, SECRET, &m);
                    assert_eq!(seen(&p), (one, salt.clone(), iterations));
                }
            }
        }
    }

    #[test]
    fn virtual_shapes_follow_the_rows_shares() {
        let m = mix();
        let mut got: BTreeMap<(Mechanism, u32), u32> = BTreeMap::new();
        let n = 20_000;
        for i in 0..n {
            let p = plan(BOTH, None, &format!("user{i}"), SECRET, &m);
            *got.entry((p.credentials.mechanism, p.credentials.iterations))
                .or_default() += 1;
        }
        // 70% / 20% / 10% of the rows; ±2 points at 20,000 draws is > 6 sigma.
        for ((mech, i), want) in [
            ((SHA256, 1_000_000), 70),
            ((SHA256, 600_000), 20),
            ((SHA1, 1_000_000), 10),
        ] {
            let share = got[&(mech, i)] as f64 * 100.0 / n as f64;
            assert!(
                (share - want as f64).abs() < 2.0,
                "{mech} at {i}: {share:.1}%"
            );
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn shares_are_rounded_so_draws_stay_put_as_rows_are_added() {
        let mut counts = BTreeMap::new();
        counts.insert((SHA256, 1_000_000), 9_000u64);
        counts.insert((SHA1, 1_000_000), 1_000u64);
        let before = DecoyMix::from_counts(&counts).unwrap();
        assert_eq!(
            before.shares().collect::<Vec<_>>(),
            [(SHA256, 1_000_000, 922), (SHA1, 1_000_000, 102)]
        );
        *counts.get_mut(&(SHA256, 1_000_000)).unwrap() += 3;
        assert_eq!(DecoyMix::from_counts(&counts).unwrap(), before);
        // A count held by too few rows is never drawn.
        counts.insert((SHA256, 36_000), 1);
        assert_eq!(DecoyMix::from_counts(&counts).unwrap(), before);
        assert_eq!(DecoyMix::from_counts(&BTreeMap::new()), None);
        let only = DecoyMix::only(4096);
        assert_eq!(only.pick(0), (SHA256, 4096));
        assert_eq!(only.pick(1023), (SHA256, 4096));
        assert_eq!(
            before.to_string(),
            "SCRAM-SHA-256 at 1000000: 922/1024, SCRAM-SHA-1 at 1000000: 102/1024"
        );
    }
}
