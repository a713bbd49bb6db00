//! What the code `#[derive(WebhookModel)]` generates calls: reading the
//! sender field, and choosing how a payload or URL is produced.

use uuid::Uuid;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::subscriber::SenderId;
use crate::{Error, Result};

/// Reads a sender id out of a model field (`sender_field = author_id`).
/// Implemented for integers, strings, UUIDs and `Option`s of them.
pub trait AsSender {
    /// The sender id, or `None` for an empty optional field.
    fn as_sender(&self) -> Option<SenderId>;
}

macro_rules! as_sender_via_from {
    ($($t:ty),*) => {$(
        impl AsSender for $t {
            fn as_sender(&self) -> Option<SenderId> { Some(SenderId::from(self.clone())) }
        }
    )*};
}
as_sender_via_from!(i8, i16, i32, i64, u8, u16, u32, String, Uuid);

impl AsSender for str {
    fn as_sender(&self) -> Option<SenderId> {
        Some(SenderId::from(self))
    }
}

impl<T: AsSender> AsSender for Option<T> {
    fn as_sender(&self) -> Option<SenderId> {
        self.as_ref().and_then(AsSender::as_sender)
    }
}

impl<T: AsSender + ?Sized> AsSender for &T {
    fn as_sender(&self) -> Option<SenderId> {
        (**self).as_sender()
    }
}

/// Used by derived code: a model's payload as the message's `data`. A
/// payload function that returns a `serde_json::Value` is used as it is
/// (an inherent method, found first); anything else `Serialize` goes
/// through `serde_json::to_value`.
#[doc(hidden)]
pub mod payload_probe {
    use serde::Serialize;
    use serde_json::Value;

    pub struct Payload<T>(pub T);

    impl Payload<Value> {
        pub fn into_payload(self) -> Result<Value, serde_json::Error> {
            Ok(self.0)
        }
    }

    pub trait ViaSerialize {
        fn into_payload(self) -> Result<Value, serde_json::Error>;
    }

    impl<T: Serialize> ViaSerialize for Payload<T> {
        fn into_payload(self) -> Result<Value, serde_json::Error> {
            serde_json::to_value(self.0)
        }
    }
}

/// Used by derived code: a model's [`AbsoluteUrl`](crate::AbsoluteUrl) when it has one, else
/// nothing (autoref specialization, resolved at compile time).
#[doc(hidden)]
pub mod url_probe {
    use crate::model::AbsoluteUrl;

    pub struct UrlProbe<'a, T>(pub &'a T);

    pub trait ViaAbsoluteUrl {
        fn probe_url(&self) -> Option<String>;
    }
    impl<T: AbsoluteUrl> ViaAbsoluteUrl for UrlProbe<'_, T> {
        fn probe_url(&self) -> Option<String> {
            Some(self.0.absolute_url())
        }
    }

    pub trait ViaNoUrl {
        fn probe_url(&self) -> Option<String>;
    }
    impl<T> ViaNoUrl for &UrlProbe<'_, T> {
        fn probe_url(&self) -> Option<String> {
            None
        }
    }
}

#[doc(hidden)]
/// Used by derived code: turns `(name, value)` pairs into headers, for a
/// model's `headers` callback. An invalid name or value is an error naming it.
pub fn to_headers<I, K, V>(pairs: I) -> Result<HeaderMap>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        // The event is filled in by the model event that called the callback.
        let bad = |reason| Error::Header {
            event: String::new(),
            name: k.to_owned(),
            reason,
        };
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("not a valid header name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| bad("not a valid header value"))?;
        map.insert(name, value);
    }
    Ok(map)
}
