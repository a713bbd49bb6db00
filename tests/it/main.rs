//! End-to-end tests of the `thorn` facade: one binary, many modules, so the
//! workspace links once.

mod codec;
mod diesel_sqlite;
mod patterns;
mod receiver;
mod signing;
