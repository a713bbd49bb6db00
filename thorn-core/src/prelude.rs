//! The names most applications use, for a glob import.
//!
//! ```
//! use thorn_core::prelude::*;
//!
//! let thorn = Thorn::builder(Config::default()).build()?;
//! let event = Event::new("user.created");
//! assert_eq!(event.name(), "user.created");
//! # drop(thorn);
//! # Ok::<(), Error>(())
//! ```

pub use crate::{
    Config, DispatchOn, Error, Event, SendOptions, SenderId, Subscriber, Thorn, WebhookModel,
};
