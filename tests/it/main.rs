//! End-to-end tests of the `thorn` facade: one binary, many modules, so the
//! workspace links once.

mod buffering;
mod codec;
mod diesel_sqlite;
mod engine;
mod filters;
mod model_events;
mod patterns;
mod receiver;
mod security;
mod signatures;
mod signing;
mod ui;
