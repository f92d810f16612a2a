//! The server's side of protocol v2 (feature `v2`): what
//! [`ServerHandshake`](super::ServerHandshake) adds to read a v2 device's
//! Noise message 1, answer with message 2 and seal the rest of the login.

use rand_core::CryptoRng;

use super::client_v2::{Ephemeral, prologue};
use super::{ConnectionError, RefusalCause};
use crate::frame::{FrameError, HEADER_LEN, MIN_MAX_FRAME, encode_handshake, finish_frame};
use crate::message::{Handshake, PROTOCOL_VERSION_2, RefusalCode};
use crate::noise::{NoiseError, PAYLOAD_AT, Pattern, ReadyToRespond, Responder, StaticKeypair};
use crate::session::{OVERHEAD, Opener, SEQ_LEN, Sealer, SessionError};

/// The server's static Noise keys and its v2 policy. A server without a
/// static key still serves `Noise_NN`; an NK device then gets
/// `unknown_key`.
#[derive(Debug, Clone, Default)]
pub struct ServerKeys {
    /// The key NK devices pin (`tether keys --server` prints its public
    /// half).
    pub current: Option<StaticKeypair>,
    /// The key before the last rotation, still accepted until the operator
    /// drops it.
    pub previous: Option<StaticKeypair>,
    /// Refuse v1 logins (`version`): only encrypted sessions.
    pub require_encryption: bool,
}

/// Which of the server's static keys an NK device used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsed {
    /// [`ServerKeys::current`].
    Current,
    /// [`ServerKeys::previous`]: the device has not learnt the new key yet.
    Previous,
}

/// Where the Noise part of a handshake stands.
#[allow(clippy::large_enum_variant)]
enum Noise {
    /// No v2 message yet (or a v1 login): frames are clear.
    Off,
    /// NK message 1 is read: message 2 carries the next message owed.
    NkRespond(ReadyToRespond),
    /// NN message 1 is read: message 2 (empty payload) is owed at once.
    NnRespond(ReadyToRespond),
    /// The Noise handshake is done: frames are sealed.
    Sealed {
        sealer: Sealer,
        opener: Opener,
        h: [u8; 32],
    },
    /// The halves went to the established connection.
    Spent,
}

/// The v2 part of a server handshake.
pub(crate) struct V2 {
    /// `None`: v2 is off (a handshake made with `ServerHandshake::new`).
    keys: Option<ServerKeys>,
    ephemeral: Option<Ephemeral>,
    noise: Noise,
    pattern: Option<Pattern>,
    key_used: Option<KeyUsed>,
}

pub(crate) type Refuse = (RefusalCode, RefusalCause);

impl V2 {
    /// v2 off: a v1-only handshake.
    pub(crate) const fn off() -> Self {
        Self {
            keys: None,
            ephemeral: None,
            noise: Noise::Off,
            pattern: None,
            key_used: None,
        }
    }

    /// v2 on, with `keys`; the server's ephemeral key is drawn from `rng`
    /// now (used only if the device speaks v2).
    pub(crate) fn new<R: CryptoRng + ?Sized>(keys: ServerKeys, rng: &mut R) -> Self {
        Self {
            keys: Some(keys),
            ephemeral: Some(Ephemeral::draw(rng)),
            ..Self::off()
        }
    }

    pub(crate) fn pattern(&self) -> Option<Pattern> {
        self.pattern
    }

    pub(crate) fn key_used(&self) -> Option<KeyUsed> {
        self.key_used
    }

    pub(crate) fn handshake_hash(&self) -> Option<&[u8; 32]> {
        match &self.noise {
            Noise::Sealed { h, .. } => Some(h),
            _ => None,
        }
    }

    /// Whether NN's message 2 is owed (nothing is read before it is sent).
    pub(crate) fn owes_reply(&self) -> bool {
        matches!(self.noise, Noise::NnRespond(_))
    }

    /// Reads the first frame: a v1 hello (returned as it is, unless
    /// encryption is required) or v2 frame 1, whose Noise message 1 is
    /// read in place. Returns the hello's bytes (NK: message 1's payload),
    /// or `None` for NN (message 2 is owed first, the hello comes sealed).
    pub(crate) fn first_frame<'b>(
        &mut self,
        body: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, Refuse> {
        let Some(keys) = &self.keys else {
            return Ok(Some(body));
        };
        if body.first() != Some(&PROTOCOL_VERSION_2) {
            if keys.require_encryption {
                return Err((RefusalCode::Version, RefusalCause::EncryptionRequired));
            }
            return Ok(Some(body));
        }
        let protocol = |e| (RefusalCode::Protocol, RefusalCause::Noise(e));
        let len = body.len();
        let Some((&mut [_, pattern], message)) = body.split_first_chunk_mut::<2>() else {
            return Err(protocol(NoiseError::TooShort { len, min: 2 }));
        };
        match pattern {
            0 => {
                self.pattern = Some(Pattern::Nn);
                let (noise, payload) = Responder::nn(&prologue(Pattern::Nn))
                    .read_message(message)
                    .map_err(protocol)?;
                if !payload.is_empty() {
                    // NN's first payload would travel in the clear.
                    return Err(protocol(NoiseError::TooLong {
                        len: payload.len(),
                        max: 0,
                    }));
                }
                self.noise = Noise::NnRespond(noise);
                Ok(None)
            }
            1 => {
                self.pattern = Some(Pattern::Nk);
                let prologue = prologue(Pattern::Nk);
                let unknown = (
                    RefusalCode::UnknownKey,
                    RefusalCause::Noise(NoiseError::Decrypt),
                );
                let mut last = Err(unknown);
                let candidates = [
                    (keys.current.as_ref(), KeyUsed::Current),
                    (keys.previous.as_ref(), KeyUsed::Previous),
                ];
                for (key, used) in candidates {
                    let Some(key) = key else { continue };
                    // A failed read leaves the message as it was.
                    match Responder::nk(&prologue, key).read_message(message) {
                        Ok((noise, _)) => {
                            last = Ok((noise, used));
                            break;
                        }
                        Err(NoiseError::Decrypt) => {}
                        Err(e) => return Err(protocol(e)),
                    }
                }
                let (noise, used) = last?;
                self.key_used = Some(used);
                self.noise = Noise::NkRespond(noise);
                // Read again for the payload: the first read's borrow ended
                // with the loop. The plaintext is in place after the key.
                let end = message.len() - crate::noise::TAG_LEN;
                Ok(Some(&message[PAYLOAD_AT..end]))
            }
            _ => Err((
                RefusalCode::Protocol,
                RefusalCause::Violation(super::Violation::UnexpectedMessage),
            )),
        }
    }

    /// Opens a sealed handshake frame (returns its plaintext), or returns
    /// a clear one as it is.
    pub(crate) fn open<'b>(&mut self, body: &'b mut [u8]) -> Result<&'b [u8], Refuse> {
        match &mut self.noise {
            Noise::Sealed { opener, .. } => opener.open_v2(body).map_err(|e| {
                let noise = match e {
                    SessionError::TooShort { len } => NoiseError::TooShort {
                        len,
                        min: OVERHEAD + 1,
                    },
                    _ => NoiseError::Decrypt,
                };
                (RefusalCode::Protocol, RefusalCause::Noise(noise))
            }),
            _ => Ok(body),
        }
    }

    /// Writes NN's message 2 (empty payload) at the start of `out`, if owed.
    pub(crate) fn poll_reply<'o>(
        &mut self,
        out: &'o mut [u8],
    ) -> Option<Result<&'o [u8], ConnectionError>> {
        let Noise::NnRespond(_) = self.noise else {
            return None;
        };
        let Noise::NnRespond(noise) = core::mem::replace(&mut self.noise, Noise::Spent) else {
            unreachable!("matched above")
        };
        Some(self.respond(noise, 0, out))
    }

    /// Writes message 2 with the `n`-byte payload at
    /// `out[HEADER_LEN + PAYLOAD_AT..]`; frames are sealed from then on.
    fn respond<'o>(
        &mut self,
        noise: ReadyToRespond,
        n: usize,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], ConnectionError> {
        let Some(ephemeral) = self.ephemeral.as_mut() else {
            return Err(ConnectionError::Frame(FrameError::Encode));
        };
        let body = out.get_mut(HEADER_LEN..).unwrap_or_default();
        let (transport, m2) = noise
            .write_message_in_place(n, body, ephemeral)
            .map_err(|_| ConnectionError::Frame(FrameError::Encode))?;
        let len = m2.len();
        self.ephemeral = None;
        let h = *transport.handshake_hash();
        let crate::noise::Transport { send, recv, .. } = transport;
        self.noise = Noise::Sealed {
            sealer: Sealer::v2(send),
            opener: Opener::v2(recv),
            h,
        };
        finish_frame(out, len, MIN_MAX_FRAME as usize).map_err(ConnectionError::Frame)
    }

    /// Writes `msg` as the next handshake frame: in the clear (v1, or a
    /// v2 refusal before Noise), in NK's message 2, or sealed.
    pub(crate) fn encode<'o>(
        &mut self,
        msg: &Handshake<'_>,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], ConnectionError> {
        let max = MIN_MAX_FRAME as usize;
        match &mut self.noise {
            Noise::Sealed { sealer, .. } => {
                let body = out.get_mut(HEADER_LEN + SEQ_LEN..).unwrap_or_default();
                let n = msg
                    .encode(body)
                    .map_err(|_| ConnectionError::Frame(FrameError::Encode))?
                    .len();
                sealer
                    .seal_in_place(out, n, max)
                    .ok_or(ConnectionError::Frame(FrameError::Encode))
            }
            Noise::NkRespond(_) => {
                let Noise::NkRespond(noise) = core::mem::replace(&mut self.noise, Noise::Spent)
                else {
                    unreachable!("matched above")
                };
                let body = out.get_mut(HEADER_LEN + PAYLOAD_AT..).unwrap_or_default();
                let n = msg
                    .encode(body)
                    .map_err(|_| ConnectionError::Frame(FrameError::Encode))?
                    .len();
                self.respond(noise, n, out)
            }
            _ => encode_handshake(msg, out, max).map_err(ConnectionError::Frame),
        }
    }

    /// The sealed halves for the established connection, if v2.
    pub(crate) fn take_halves(&mut self) -> Option<(Sealer, Opener)> {
        match core::mem::replace(&mut self.noise, Noise::Spent) {
            Noise::Sealed { sealer, opener, .. } => Some((sealer, opener)),
            other => {
                self.noise = other;
                None
            }
        }
    }

    /// Whether frames are sealed (the login is bound to a Noise session).
    pub(crate) fn is_sealed(&self) -> bool {
        matches!(self.noise, Noise::Sealed { .. })
    }

    /// Whether the device speaks v2.
    pub(crate) fn is_v2(&self) -> bool {
        self.pattern.is_some()
    }
}
