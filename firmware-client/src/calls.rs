//! The device's calls as the application holds them: typed handles and
//! their replies. The call table itself is the connection machine's.

use core::marker::PhantomData;

use tether_core::connection::CallFailure;
use tether_core::method::{self, Method};

use crate::error::Failure;

/// A call sent with [`Session::send_call`](crate::Session::send_call),
/// waiting for its reply.
#[derive(Debug)]
#[must_use = "collect the reply with Session::next_reply"]
pub struct Pending<M> {
    pub(crate) id: u32,
    pub(crate) _method: PhantomData<fn() -> M>,
}

impl<M: Method> Pending<M> {
    /// The call's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// If `reply` answers this call, its decoded result.
    pub fn take<'a>(&self, reply: &Reply<'a>) -> Option<Result<M::Reply<'a>, Failure<'a>>> {
        (reply.id == self.id).then(|| reply.decode::<M>())
    }
}

/// The answer to one of the device's calls, borrowed from the receive
/// buffer (drop it before using the session again).
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub(crate) id: u32,
    pub(crate) outcome: Result<&'a [u8], Failure<'a>>,
}

impl<'a> Reply<'a> {
    pub(crate) fn from_core(reply: tether_core::connection::Reply<'a>) -> Self {
        let outcome = reply.result.map_err(|e| match e {
            CallFailure::Remote { code, message } => Failure::Remote { code, message },
            CallFailure::TimedOut => Failure::Timeout,
        });
        Self {
            id: reply.id,
            outcome,
        }
    }

    /// The id of the call it answers.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The postcard-encoded result, or how the call failed.
    pub fn raw(&self) -> Result<&'a [u8], Failure<'a>> {
        self.outcome
    }

    /// The result decoded as `M`'s reply.
    pub fn decode<M: Method>(&self) -> Result<M::Reply<'a>, Failure<'a>> {
        method::decode_reply::<M>(self.outcome?).map_err(Failure::BadReply)
    }
}
