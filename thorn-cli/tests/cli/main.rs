//! The `thorn` command end to end. The receiver and database helpers are
//! the facade's integration-test modules, shared by path.

#![allow(dead_code, unreachable_pub)]

#[path = "../../../tests/it/db.rs"]
mod db;
mod listen;
#[path = "../../../tests/it/receiver.rs"]
mod receiver;
mod worker;
