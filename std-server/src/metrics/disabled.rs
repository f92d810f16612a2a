//! The metric types of a build without the `metrics` feature: the calls of
//! prometheus-client's `Counter`, `Gauge`, `Histogram`, `Family` and
//! `Registry` that this crate makes, on zero-sized types that record
//! nothing. Every method is empty and `#[inline]`, so a recording call
//! compiles to nothing, and the code that records (sessions, logins, the
//! store, forwarding, revocation, the log limit) needs no `cfg`.

use std::marker::PhantomData;

/// A counter that counts nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(());

impl Counter {
    #[inline]
    pub(crate) fn inc(&self) {}

    #[inline]
    pub(crate) fn inc_by(&self, _: u64) {}
}

/// A gauge that holds nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauge(());

impl Gauge {
    #[inline]
    pub(crate) fn inc(&self) {}

    #[inline]
    pub(crate) fn dec(&self) {}
}

/// A histogram that keeps nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram(());

impl Histogram {
    #[inline]
    pub(crate) fn new(_buckets: impl IntoIterator<Item = f64>) -> Self {
        Self(())
    }

    #[inline]
    pub(crate) fn observe(&self, _: f64) {}
}

/// The label set, metric and constructor types of a [`Family`].
type Types<S, M, C> = PhantomData<fn() -> (S, M, C)>;

/// A family of series by label values: each is the metric's default.
pub(crate) struct Family<S, M, C = fn() -> M>(Types<S, M, C>);

impl<S, M> Default for Family<S, M> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<S, M, C> Clone for Family<S, M, C> {
    fn clone(&self) -> Self {
        Self(PhantomData)
    }
}

impl<S, M: Default, C> Family<S, M, C> {
    #[inline]
    pub(crate) fn new_with_constructor(_: C) -> Self {
        Self(PhantomData)
    }

    #[inline]
    pub(crate) fn get_or_create_owned(&self, _: &S) -> M {
        M::default()
    }
}

/// A registry that registers nothing.
#[derive(Debug, Default)]
pub(crate) struct Registry(());

impl Registry {
    #[inline]
    pub(crate) fn with_prefix(_: &str) -> Self {
        Self(())
    }

    #[inline]
    pub(crate) fn register<M>(&mut self, _name: &str, _help: &str, _metric: M) {}
}
