//! One line per method: an avatar's calls dispatched to async closures, in
//! the style of axum's routes.
//!
//! ```
//! use tether_core::method::{Method, ToServer};
//! use tether_server::dispatch::Methods;
//! use tether_server::realm::{Avatar, CallResult, IncomingCall, RemoteError};
//! use std::sync::Arc;
//!
//! struct Report;
//! impl Method for Report { const NAME: &'static str = "report"; type Args<'a> = f32; type Reply<'a> = f32; }
//! impl ToServer for Report {}
//!
//! /// What each call gets: here the user's name.
//! #[derive(Clone)]
//! struct Device { user: String }
//!
//! // Built once (in the realm), shared by every session.
//! let methods: Arc<Methods<Device>> = Arc::new(
//!     Methods::<Device>::new()
//!         .method::<Report, _>(|device, celsius| async move {
//!             println!("{} reports {celsius}", device.user);
//!             Ok(21.0)
//!         }),
//! );
//!
//! struct MyAvatar { device: Device, methods: Arc<Methods<Device>> }
//! impl Avatar for MyAvatar {
//!     async fn call(&self, call: IncomingCall) -> CallResult {
//!         self.methods.dispatch(self.device.clone(), call).await
//!     }
//! }
//! ```
//!
//! Each closure gets the context (cloned per call) and the decoded
//! arguments, and returns the reply or a [`RemoteError`]. Arguments that do
//! not decode are answered `BAD_ARGUMENTS`, other methods
//! `UNKNOWN_METHOD`. A method must be [`ToServer`] (the device calls it) and
//! its argument and reply types must own their data (`u8`, `String`, a
//! struct of owned fields); for borrowed ones (`&str`) answer in
//! [`Avatar::call`](crate::Avatar::call) with [`IncomingCall::args`] and
//! [`reply`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use tether_core::message::ErrorCode;
use tether_core::method::ToServer;

use crate::realm::{CallResult, IncomingCall, RemoteError, reply};

type Answer = Pin<Box<dyn Future<Output = CallResult> + Send>>;
type Route<C> = Box<dyn Fn(C, IncomingCall) -> Answer + Send + Sync>;

/// The device's methods by name, each answered by an async closure over a
/// context `C`.
pub struct Methods<C> {
    routes: HashMap<&'static str, Route<C>>,
}

impl<C> fmt::Debug for Methods<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.routes.keys().collect();
        names.sort();
        f.debug_struct("Methods").field("methods", &names).finish()
    }
}

impl<C> Default for Methods<C> {
    fn default() -> Self {
        Self {
            routes: HashMap::new(),
        }
    }
}

impl<C: Send + 'static> Methods<C> {
    /// No methods yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `M`, answered by `f(context, args)`; a later `M` replaces an
    /// earlier one. Written `.method::<M, _>(|ctx, args| async move { .. })`
    /// (the `_` is the closure's future).
    pub fn method<M, Fut>(
        mut self,
        f: impl Fn(C, M::Args<'static>) -> Fut + Send + Sync + 'static,
    ) -> Self
    where
        M: ToServer + 'static,
        M::Args<'static>: DeserializeOwned + Send + 'static,
        Fut: Future<Output = Result<M::Reply<'static>, RemoteError>> + Send + 'static,
    {
        let route: Route<C> = Box::new(move |ctx, call: IncomingCall| {
            let answer: Answer = match tether_core::message::decode::<M::Args<'static>>(&call.args)
            {
                Ok(args) => {
                    let answered = f(ctx, args);
                    Box::pin(async move { reply::<M>(&answered.await?) })
                }
                // The same BAD_ARGUMENTS answer as `IncomingCall::args`.
                Err(e) => Box::pin(std::future::ready(Err(RemoteError::new(
                    ErrorCode::BAD_ARGUMENTS,
                    format!("arguments of {} do not decode: {e}", M::NAME),
                )))),
            };
            answer
        });
        self.routes.insert(M::NAME, route);
        self
    }

    /// Whether `method` has a route.
    pub fn has(&self, method: &str) -> bool {
        self.routes.contains_key(method)
    }

    /// Answers `call` with its route, or `UNKNOWN_METHOD`.
    pub fn dispatch(
        &self,
        ctx: C,
        call: IncomingCall,
    ) -> impl Future<Output = CallResult> + Send + use<C> {
        let answer: Answer = match self.routes.get(call.method()) {
            Some(route) => route(ctx, call),
            None => Box::pin(std::future::ready(Err(call.unknown_method()))),
        };
        answer
    }
}

#[cfg(test)]
mod tests {
    use tether_core::method::{self, Method};

    use super::*;

    struct Double;
    impl Method for Double {
        const NAME: &'static str = "double";
        type Args<'a> = u64;
        type Reply<'a> = u64;
    }
    impl ToServer for Double {}

    fn call(name: &str, args: Vec<u8>) -> IncomingCall {
        IncomingCall {
            id: 1,
            method: name.into(),
            args,
        }
    }

    #[tokio::test]
    async fn each_route_answers_its_method_and_the_rest_is_unknown() {
        let methods = Methods::new().method::<Double, _>(|offset: u64, n| async move {
            match n.checked_mul(2) {
                Some(d) => Ok(d + offset),
                None => Err(RemoteError::failed("too large")),
            }
        });
        assert!(methods.has("double") && !methods.has("echo"));
        let mut buf = [0u8; 16];
        let args = method::encode_args::<Double>(&21, &mut buf)
            .unwrap()
            .to_vec();
        let reply = methods.dispatch(1, call("double", args)).await.unwrap();
        assert_eq!(method::decode_reply::<Double>(&reply), Ok(43));

        let args = method::encode_args::<Double>(&u64::MAX, &mut buf)
            .unwrap()
            .to_vec();
        let e = methods.dispatch(0, call("double", args)).await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::FAILED, "too large")
        );

        let e = methods
            .dispatch(0, call("double", vec![0xff]))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BAD_ARGUMENTS);
        let e = methods.dispatch(0, call("echo", vec![])).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::UNKNOWN_METHOD);
    }
}
