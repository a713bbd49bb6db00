//! End-to-end tests of the `thorn` facade: one binary, many modules, so the
//! workspace links once.

mod api;
mod api_log;
mod browser;
mod buffering;
mod codec;
mod conformance;
mod db;
#[cfg(feature = "diesel-async")]
mod diesel_async_funtests;
mod diesel_funtests;
mod diesel_migrations;
mod diesel_sqlite;
mod diesel_store;
mod diesel_writes;
mod engine;
mod filters;
mod funtests;
mod model_events;
mod outbox;
mod page;
mod patterns;
mod receiver;
mod relay;
#[cfg(feature = "seaorm")]
mod seaorm_funtests;
#[cfg(feature = "seaorm")]
mod seaorm_hooks;
#[cfg(feature = "seaorm-migration")]
mod seaorm_migrations;
#[cfg(feature = "seaorm")]
mod seaorm_transactions;
mod security;
mod signatures;
mod signing;
mod transactions;
