//! tether-server integration tests against the Django-made fixture databases.

mod admin;
mod cli;
mod common;
mod databases;
mod forward;
mod login;
mod revalidate;
mod rust_api;
mod session;
mod store;
