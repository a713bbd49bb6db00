//! Message bodies: JSON and `application/x-www-form-urlencoded`.
//!
//! Payloads are anything `Serialize`. With the serde implementations of the
//! types Thorn's manual lists, JSON comes out as Thorn produces it:
//!
//! | Rust type | JSON |
//! |---|---|
//! | `chrono::DateTime`, `NaiveDateTime`, `NaiveDate`, `NaiveTime` | ISO-8601 string, sub-second digits kept (`2016-01-13T23:12:52.205785Z`) |
//! | `rust_decimal::Decimal` | string, scale kept (`"12.50"`) |
//! | `uuid::Uuid` | hyphenated string |
//!
//! Form bodies carry one field per top-level key of the message (`event`,
//! `ref`, `sender`, `data`); strings and numbers as they are, `null` as an
//! empty value, and nested objects or arrays as their JSON text, so a
//! receiver can always rebuild the message.
//!
//! ```
//! use thorn_core::codec::ContentType;
//! use serde_json::json;
//!
//! let message = json!({"event": "article.created", "ref": null, "sender": 7, "data": {"id": 1}});
//! let form = ContentType::FormUrlEncoded.encode(&message);
//! assert_eq!(
//!     std::str::from_utf8(&form).unwrap(),
//!     "event=article.created&ref=&sender=7&data=%7B%22id%22%3A1%7D"
//! );
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The body format a subscriber asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ContentType {
    /// `application/json`, the default.
    #[default]
    #[serde(rename = "application/json")]
    Json,
    /// `application/x-www-form-urlencoded`.
    #[serde(rename = "application/x-www-form-urlencoded")]
    FormUrlEncoded,
}

impl ContentType {
    /// The MIME type, as sent in the `Content-Type` header.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::FormUrlEncoded => "application/x-www-form-urlencoded",
        }
    }

    /// Encodes a message that is already a JSON value. Cannot fail: every
    /// failure happens earlier, when the payload becomes a JSON value.
    pub fn encode(self, message: &Value) -> Vec<u8> {
        match self {
            ContentType::Json => {
                serde_json::to_vec(message).expect("a serde_json::Value always serializes")
            }
            ContentType::FormUrlEncoded => encode_form(message).into_bytes(),
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown content type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown content type `{0}`: expected application/json or application/x-www-form-urlencoded"
)]
pub struct UnknownContentType(pub String);

impl FromStr for ContentType {
    type Err = UnknownContentType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "application/json" | "json" => Ok(ContentType::Json),
            "application/x-www-form-urlencoded" | "form" => Ok(ContentType::FormUrlEncoded),
            _ => Err(UnknownContentType(s.to_owned())),
        }
    }
}

fn encode_form(message: &Value) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match message {
        Value::Object(map) => {
            for (key, value) in map {
                form.append_pair(key, &form_value(value));
            }
        }
        other => {
            form.append_pair("data", &form_value(other));
        }
    }
    form.finish()
}

fn form_value(value: &Value) -> std::borrow::Cow<'_, str> {
    match value {
        Value::Null => "".into(),
        Value::String(s) => s.as_str().into(),
        Value::Bool(b) => if *b { "true" } else { "false" }.into(),
        Value::Number(n) => n.to_string().into(),
        nested => nested.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_type_names() {
        assert_eq!(
            "application/x-www-form-urlencoded"
                .parse::<ContentType>()
                .unwrap(),
            ContentType::FormUrlEncoded
        );
        assert!(
            "text/xml"
                .parse::<ContentType>()
                .unwrap_err()
                .to_string()
                .contains("text/xml")
        );
    }

    #[test]
    fn form_keeps_scalars_and_nests_json() {
        let m = json!({"event": "a.b", "ref": "https://x/1?q=a b", "sender": null,
                       "data": {"tags": ["x", "y"], "ok": true}});
        let body = String::from_utf8(ContentType::FormUrlEncoded.encode(&m)).unwrap();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(pairs[0], ("event".into(), "a.b".into()));
        assert_eq!(pairs[1], ("ref".into(), "https://x/1?q=a b".into()));
        assert_eq!(pairs[2], ("sender".into(), "".into()));
        let data: Value = serde_json::from_str(&pairs[3].1).unwrap();
        assert_eq!(data, json!({"tags": ["x", "y"], "ok": true}));
    }
}
