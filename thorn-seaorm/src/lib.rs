//! SeaORM integration for Thorn for Rust.
//!
//! **Not built yet.** This crate reserves the name and the place in the
//! workspace; the `ActiveModelBehavior` wiring arrives in a later release.
//! Use `thorn-diesel` today.
