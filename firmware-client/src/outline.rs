//! Keeps large futures out of line.
//!
//! LLVM inlines the `poll` of a future into its parent's when it is awaited
//! once, so on a device the whole client (login, session, handler) would end
//! up as one giant state machine, and nested state machines inlined into each
//! other compile to noticeably more code. Awaiting through `outlined!` keeps
//! each large `poll` as its own function. No unsafe: the future is pinned on
//! the caller's state with `core::pin::pin!` (once: an `async fn` wrapper
//! would store it twice, as its argument and as its pinned local).

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

/// Awaits a future through a `poll` that is never inlined.
macro_rules! outlined {
    ($future:expr) => {{
        let future = ::core::pin::pin!($future);
        $crate::outline::Outlined(future).await
    }};
}

pub(crate) struct Outlined<'a, F>(pub(crate) Pin<&'a mut F>);

impl<F: Future> Future for Outlined<'_, F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}
