//! The request signature of docs/DJANGO.md section 1.2: what a forwarded
//! request carries so that the Django project can tell it came from this
//! server, unaltered and recently.
//!
//! ```text
//! string_to_sign = "tether-forward-v1" LF timestamp LF "POST" LF route LF
//!                  request id LF user id LF quoted username LF session LF
//!                  peer LF hex(SHA-256(body))
//! signature      = "v1=" hex(HMAC-SHA256(secret, string_to_sign))
//! ```

use std::fmt;

use hmac::{KeyInit as _, Mac as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest as _, Sha256};

/// The fewest characters a forward secret may have.
pub const MIN_SECRET_LEN: usize = 16;

/// Every byte but RFC 3986's unreserved characters is percent-encoded:
/// Python's `urllib.parse.quote(s, safe="")`.
const QUOTED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `quote(s)` of docs/DJANGO.md: percent-encoding of the UTF-8 bytes with
/// upper-case hex, unreserved characters kept.
pub fn quote(s: &str) -> String {
    utf8_percent_encode(s, QUOTED).to_string()
}

/// The headers' names (docs/DJANGO.md section 1.1).
pub mod header {
    /// Unix seconds at signing.
    pub const TIMESTAMP: &str = "x-tether-timestamp";
    /// 32 lower-case hex characters; the same on every retry of a delivery.
    pub const REQUEST_ID: &str = "x-tether-request-id";
    /// The Django user's primary key.
    pub const USER_ID: &str = "x-tether-user-id";
    /// `quote(username)`.
    pub const USERNAME: &str = "x-tether-username";
    /// The session id.
    pub const SESSION: &str = "x-tether-session";
    /// The device's `ip:port`.
    pub const PEER: &str = "x-tether-peer";
    /// `v1=` and the signature.
    pub const SIGNATURE: &str = "x-tether-signature";
    /// In a 4xx answer: the application's own error code (>= 1000).
    pub const ERROR_CODE: &str = "x-tether-error-code";
}

/// The shared secret of `--forward-secret`. Never printed.
#[derive(Clone)]
pub struct ForwardSecret(Vec<u8>);

impl fmt::Debug for ForwardSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForwardSecret(<redacted>)")
    }
}

impl ForwardSecret {
    /// The secret: at least [`MIN_SECRET_LEN`] characters; its UTF-8 bytes
    /// are the HMAC key.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(format!(
                "the forward secret must be at least {MIN_SECRET_LEN} characters \
                 (e.g. `openssl rand -hex 32`, the same value in the Django settings)"
            ));
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }
}

/// Who a request is about: the session's fixed header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The user's primary key, decimal.
    pub user_id: String,
    /// `quote(username)`.
    pub username: String,
    /// The session id, decimal.
    pub session: String,
    /// `ip:port` (`[v6]:port`).
    pub peer: String,
}

/// The signed headers of one request, in the order of section 1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `X-Tether-Timestamp`.
    pub timestamp: String,
    /// `X-Tether-Signature`.
    pub signature: String,
}

impl ForwardSecret {
    /// Signs a request to `route` (relative to the base URL, e.g.
    /// `call/read_sensor`) at `unix_secs`.
    pub fn sign(
        &self,
        unix_secs: u64,
        route: &str,
        request_id: &str,
        origin: &Origin,
        body: &[u8],
    ) -> Signed {
        let timestamp = unix_secs.to_string();
        let text = string_to_sign(&timestamp, route, request_id, origin, body);
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(text.as_bytes());
        let signature = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        Signed {
            timestamp,
            signature,
        }
    }
}

/// The text the signature covers.
pub fn string_to_sign(
    timestamp: &str,
    route: &str,
    request_id: &str,
    origin: &Origin,
    body: &[u8],
) -> String {
    [
        "tether-forward-v1",
        timestamp,
        "POST",
        route,
        request_id,
        &origin.user_id,
        &origin.username,
        &origin.session,
        &origin.peer,
        &hex::encode(Sha256::digest(body)),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_is_pythons_quote_with_nothing_safe() {
        assert_eq!(quote("read_sensor"), "read_sensor");
        assert_eq!(quote("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(quote("a/b c"), "a%2Fb%20c");
        assert_eq!(quote("ålice@example.com"), "%C3%A5lice%40example.com");
        assert_eq!(quote("x\ny"), "x%0Ay");
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(ForwardSecret::new("fifteen chars!!").is_err());
        let s = ForwardSecret::new("sixteen chars!!!").unwrap();
        assert_eq!(format!("{s:?}"), "ForwardSecret(<redacted>)");
    }

    /// Computed with Python's standard library (hashlib, hmac,
    /// urllib.parse.quote) from docs/DJANGO.md; the Django test project
    /// (tests/django-forward) checks the same vector with its own verifier.
    #[test]
    fn signature_vector() {
        let secret = ForwardSecret::new("a forward secret of 32 characters").unwrap();
        let origin = Origin {
            user_id: "42".into(),
            username: quote("ålice"),
            session: "7".into(),
            peer: "192.0.2.10:50112".into(),
        };
        let text = string_to_sign(
            "1796592600",
            "call/read_sensor",
            "0123456789abcdef0123456789abcdef",
            &origin,
            b"\x07outdoor",
        );
        assert_eq!(
            text,
            "tether-forward-v1\n1796592600\nPOST\ncall/read_sensor\n\
             0123456789abcdef0123456789abcdef\n42\n%C3%A5lice\n7\n192.0.2.10:50112\n\
             849c2f3d8a29335c9bb08cc7e77af7d7ad6b714c8dd02680c9f4fe0db57dd548"
        );
        let signed = secret.sign(
            1_796_592_600,
            "call/read_sensor",
            "0123456789abcdef0123456789abcdef",
            &origin,
            b"\x07outdoor",
        );
        assert_eq!(signed.timestamp, "1796592600");
        assert_eq!(
            signed.signature,
            "v1=516d9aea58db27bce31ede4a0c1d1a50b59229a6f6585db83210f9d520455da8"
        );
    }
}
