//! One line per method: a [`Handler`] built from closures, in the style of
//! axum's routes.
//!
//! ```
//! use tether_core::method::builtin::{DeviceInfo, DeviceStatus};
//! use tether_core::method::{Method, ToDevice};
//! use tether_firmware::Methods;
//!
//! struct Blink;
//! impl Method for Blink { const NAME: &'static str = "blink"; type Args<'a> = u8; type Reply<'a> = bool; }
//! impl ToDevice for Blink {}
//!
//! struct Board { blinks: u32 }
//!
//! let mut handler = Methods::new(Board { blinks: 0 })
//!     .method::<Blink>(|board, n| { board.blinks += u32::from(n); Ok(true) })
//!     .method::<DeviceInfo>(|_, ()| Ok(DeviceStatus { firmware: "demo 1.0", uptime_secs: 7 }));
//! // `handler` is a `Handler`: pass `&mut handler` to `Session::serve` and friends.
//! assert_eq!(handler.state().blinks, 0);
//! ```
//!
//! Each closure gets the state and the decoded arguments and returns the
//! reply, or an error code and message. Arguments that do not decode are
//! answered `BAD_ARGUMENTS`, methods without a route `UNKNOWN_METHOD`. A
//! method must be [`ToDevice`] (the server calls it), so a device -> server
//! method has no route. The routes are a chain of types, checked in the
//! order they were added: no allocation, no table, and no flash unless
//! used. A reply that borrows from the arguments (`Echo`), an `async`
//! answer, or notifications: implement [`Handler`] by hand.

use core::future::Future;
use core::marker::PhantomData;

use tether_core::message::ErrorCode;
use tether_core::method::ToDevice;

use crate::handler::{Handler, Request, Responded, Responder};

/// A handler's error answer: a code and a message for the server.
pub type Refusal = (ErrorCode, &'static str);

/// A [`Handler`] made of one closure per method, over a state `S`.
#[derive(Debug)]
pub struct Methods<S, R = NoRoute> {
    state: S,
    routes: R,
}

/// The end of the route chain: nothing matched.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRoute;

/// One method's route, then the rest of the chain.
pub struct Route<M, F, Next> {
    f: F,
    next: Next,
    _method: PhantomData<fn() -> M>,
}

impl<M, F, Next: core::fmt::Debug> core::fmt::Debug for Route<M, F, Next> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Route")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// A chain of routes (implemented by [`NoRoute`] and [`Route`]).
pub trait Routes<S> {
    /// Answers `req` if a route matches it; otherwise gives `reply` back.
    fn answer<'o>(
        &mut self,
        state: &mut S,
        req: Request<'_>,
        reply: Responder<'o>,
    ) -> Result<Responded, Responder<'o>>;
}

impl<S> Routes<S> for NoRoute {
    fn answer<'o>(
        &mut self,
        _state: &mut S,
        _req: Request<'_>,
        reply: Responder<'o>,
    ) -> Result<Responded, Responder<'o>> {
        Err(reply)
    }
}

impl<S, M, F, Next> Routes<S> for Route<M, F, Next>
where
    M: ToDevice,
    F: for<'a> FnMut(&mut S, M::Args<'a>) -> Result<M::Reply<'static>, Refusal>,
    Next: Routes<S>,
{
    fn answer<'o>(
        &mut self,
        state: &mut S,
        req: Request<'_>,
        reply: Responder<'o>,
    ) -> Result<Responded, Responder<'o>> {
        if !req.is::<M>() {
            return self.next.answer(state, req, reply);
        }
        Ok(match req.args::<M>() {
            Ok(args) => match (self.f)(state, args) {
                Ok(value) => reply.ok::<M>(&value),
                Err((code, message)) => reply.error(code, message),
            },
            Err(_) => reply.bad_arguments(),
        })
    }
}

impl<S> Methods<S> {
    /// No routes yet, over `state`.
    pub fn new(state: S) -> Self {
        Self {
            state,
            routes: NoRoute,
        }
    }
}

impl<S, R> Methods<S, R> {
    /// Adds the route of `M`: `f(state, args)` answers it.
    pub fn method<M: ToDevice>(
        self,
        f: impl for<'a> FnMut(&mut S, M::Args<'a>) -> Result<M::Reply<'static>, Refusal>,
    ) -> Methods<S, impl Routes<S>>
    where
        R: Routes<S>,
    {
        Methods {
            state: self.state,
            routes: Route {
                f,
                next: self.routes,
                _method: PhantomData,
            },
        }
    }

    /// The state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, mutably.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

impl<S, R: Routes<S>> Handler for Methods<S, R> {
    fn on_call(
        &mut self,
        req: Request<'_>,
        reply: Responder<'_>,
    ) -> impl Future<Output = Responded> {
        let answered = match self.routes.answer(&mut self.state, req, reply) {
            Ok(done) => done,
            Err(reply) => reply.unknown_method(),
        };
        core::future::ready(answered)
    }
}

#[cfg(test)]
mod tests {
    use tether_core::method::builtin::{DeviceInfo, DeviceStatus};
    use tether_core::method::{self, Method};

    use super::*;
    use crate::handler::Outcome;

    struct Blink;
    impl Method for Blink {
        const NAME: &'static str = "blink";
        type Args<'a> = u8;
        type Reply<'a> = bool;
    }
    impl ToDevice for Blink {}

    fn call<H: Handler>(h: &mut H, name: &str, args: &[u8], out: &mut [u8]) -> Outcome {
        let req = Request {
            id: 1,
            method: name,
            args,
        };
        embassy_futures::block_on(h.on_call(req, Responder { out })).0
    }

    #[test]
    fn each_route_answers_its_method_and_the_rest_is_unknown() {
        let mut h = Methods::new(0u32)
            .method::<Blink>(|blinks, n| {
                if n == 0 {
                    return Err((ErrorCode::FAILED, "nothing to blink"));
                }
                *blinks += u32::from(n);
                Ok(true)
            })
            .method::<DeviceInfo>(|blinks, ()| {
                Ok(DeviceStatus {
                    firmware: "test",
                    uptime_secs: u64::from(*blinks),
                })
            });
        let mut out = [0u8; 64];
        let mut args = [0u8; 8];
        let three = method::encode_args::<Blink>(&3, &mut args)
            .unwrap()
            .to_vec();
        let o = call(&mut h, "blink", &three, &mut out);
        assert_eq!(o.code, None);
        assert_eq!(method::decode_reply::<Blink>(&out[..o.len]), Ok(true));
        assert_eq!(*h.state(), 3);

        let o = call(&mut h, "device_info", &[], &mut out);
        assert_eq!(o.code, None);
        let status = method::decode_reply::<DeviceInfo>(&out[..o.len]).unwrap();
        assert_eq!((status.firmware, status.uptime_secs), ("test", 3));

        let zero = method::encode_args::<Blink>(&0, &mut args)
            .unwrap()
            .to_vec();
        let o = call(&mut h, "blink", &zero, &mut out);
        assert_eq!(o.code, Some(ErrorCode::FAILED));
        assert_eq!(&out[..o.len], b"nothing to blink");

        let o = call(&mut h, "blink", &[1, 2, 3], &mut out);
        assert_eq!(o.code, Some(ErrorCode::BAD_ARGUMENTS));
        let o = call(&mut h, "whoami", &[], &mut out);
        assert_eq!(o.code, Some(ErrorCode::UNKNOWN_METHOD));
        assert_eq!(*h.state(), 3);
    }
}
