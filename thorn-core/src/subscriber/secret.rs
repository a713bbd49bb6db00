//! [`Secret`]: a signing secret that does not show itself in logs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A subscription's HMAC secret. `Debug` prints `Secret(***)`, so a
/// subscriber, a configuration or an error can be logged whole; read the
/// secret itself with [`Secret::expose`]. Serialized as the plain string
/// (the REST API shows a subscription's secret to its owner).
///
/// ```
/// use thorn_core::subscriber::Secret;
///
/// let secret = Secret::from("s3cret");
/// assert_eq!(secret.expose(), "s3cret");
/// assert_eq!(format!("{secret:?}"), "Secret(***)");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A new random secret ([`generate_secret`](crate::signing::generate_secret)).
    pub fn generate() -> Self {
        Secret(crate::signing::generate_secret())
    }

    /// The secret, to sign or verify with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Secret(secret.to_owned())
    }
}
