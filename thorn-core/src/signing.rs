//! HMAC signatures of message bodies (the `Hook-HMAC` header) and secrets.
//!
//! [`sign`] is Python Thorn's recommended signer (`thorn.utils.hmac.sign`):
//! standard base64, with padding, of the HMAC of the exact body bytes.
//! [`compat_sign`] reproduces Thorn's legacy itsdangerous-based default for
//! receivers migrating from Python.
//!
//! ```
//! use thorn_core::signing::{sign, verify, HmacDigest};
//!
//! let body = br#"{"event": "article.created"}"#;
//! let sig = sign(HmacDigest::Sha256, b"secret", body);
//! assert!(verify(HmacDigest::Sha256, b"secret", body, &sig));
//! assert!(!verify(HmacDigest::Sha256, b"secret", b"tampered", &sig));
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

/// The hash function of an HMAC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HmacDigest {
    /// SHA-1 (accepted for compatibility; prefer SHA-256).
    Sha1,
    /// SHA-256, the default.
    #[default]
    Sha256,
    /// SHA-512.
    Sha512,
}

impl HmacDigest {
    /// The name used in settings and the REST API: `sha1`, `sha256`, `sha512`.
    pub fn as_str(self) -> &'static str {
        match self {
            HmacDigest::Sha1 => "sha1",
            HmacDigest::Sha256 => "sha256",
            HmacDigest::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HmacDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown digest name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown HMAC digest `{0}`: expected one of sha1, sha256, sha512")]
pub struct UnknownDigest(pub String);

impl FromStr for HmacDigest {
    type Err = UnknownDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(HmacDigest::Sha1),
            "sha256" => Ok(HmacDigest::Sha256),
            "sha512" => Ok(HmacDigest::Sha512),
            _ => Err(UnknownDigest(s.to_owned())),
        }
    }
}

fn hmac_bytes(digest: HmacDigest, key: &[u8], message: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }
    match digest {
        HmacDigest::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(key, message),
        HmacDigest::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, message),
        HmacDigest::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(key, message),
    }
}

/// Signs `body` with `secret`: base64 (standard alphabet, padded) of
/// `HMAC(digest, secret, body)`. Same output as Python Thorn's
/// `thorn.utils.hmac.sign(digest, secret, body)`.
pub fn sign(digest: HmacDigest, secret: &[u8], body: &[u8]) -> String {
    STANDARD.encode(hmac_bytes(digest, secret, body))
}

/// Checks a [`sign`] signature in constant time.
///
/// Returns `false` for a signature that is not valid base64 or does not
/// match the body.
pub fn verify(digest: HmacDigest, secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(expected) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8], expected: &[u8]) -> bool {
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(message);
        mac.verify_slice(expected).is_ok()
    }
    match digest {
        HmacDigest::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(secret, body, &expected),
        HmacDigest::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(secret, body, &expected),
        HmacDigest::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(secret, body, &expected),
    }
}

/// Python Thorn's legacy signer, `thorn.utils.hmac.compat_sign`: an
/// itsdangerous `Signer` with its default `django-concat` key derivation
/// (`key = H(b"itsdangerous.Signer" + b"signer" + secret)`) and URL-safe
/// base64 without padding.
///
/// Opt in with [`Signer::Compat`] only for receivers that still verify
/// that format.
pub fn compat_sign(digest: HmacDigest, secret: &[u8], body: &[u8]) -> String {
    let mut salted = Vec::with_capacity(25 + secret.len());
    salted.extend_from_slice(b"itsdangerous.Signersigner");
    salted.extend_from_slice(secret);
    let key = match digest {
        HmacDigest::Sha1 => <sha1::Sha1 as sha2::Digest>::digest(&salted).to_vec(),
        HmacDigest::Sha256 => <sha2::Sha256 as sha2::Digest>::digest(&salted).to_vec(),
        HmacDigest::Sha512 => <sha2::Sha512 as sha2::Digest>::digest(&salted).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(hmac_bytes(digest, &key, body))
}

/// Which signature goes in the `Hook-HMAC` header (`THORN_HMAC_SIGNER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Signer {
    /// [`sign`]: Thorn's recommended signer, verifiable in any language.
    #[default]
    Hmac,
    /// [`compat_sign`]: Thorn's legacy itsdangerous format.
    Compat,
}

impl Signer {
    /// Signs `body` with this signer.
    pub fn sign(self, digest: HmacDigest, secret: &[u8], body: &[u8]) -> String {
        match self {
            Signer::Hmac => sign(digest, secret, body),
            Signer::Compat => compat_sign(digest, secret, body),
        }
    }
}

/// [Standard Webhooks](https://www.standardwebhooks.com/) signatures, so
/// receivers can verify deliveries with off-the-shelf libraries.
///
/// The key is the secret's bytes, or, for a secret written `whsec_<base64>`,
/// the bytes it encodes; [`standard_webhooks_secret`] shows a secret in the
/// `whsec_` form a receiver configures.
///
/// ```
/// use thorn_core::signing::{standard_webhooks_secret, standard_webhooks_signature};
///
/// let sig = standard_webhooks_signature(["old-secret", "new-secret"], "msg_1", 1700000000, b"{}");
/// assert_eq!(sig.split(' ').count(), 2);
/// assert!(sig.starts_with("v1,"));
/// assert!(standard_webhooks_secret("abc").starts_with("whsec_"));
/// ```
pub fn standard_webhooks_signature<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let signed = signed_content(id, timestamp, body);
    let mut out = String::new();
    for secret in secrets {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(&STANDARD.encode(hmac_bytes(
            HmacDigest::Sha256,
            &standard_webhooks_key(secret),
            &signed,
        )));
    }
    out
}

/// What Standard Webhooks sign: `<id>.<timestamp>.<body>`.
fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    signed
}

/// True when one of the `v1,<base64>` signatures of a `webhook-signature`
/// header (space-separated) is `secret`'s for this `webhook-id`,
/// `webhook-timestamp` and body; compared in constant time. It does not
/// judge the timestamp's age: a receiver refuses old ones itself.
///
/// ```
/// use thorn_core::signing::{standard_webhooks_signature, verify_standard_webhooks};
///
/// let header = standard_webhooks_signature(["old", "new"], "msg_1", 1700000000, b"{}");
/// assert!(verify_standard_webhooks("new", "msg_1", 1700000000, b"{}", &header));
/// assert!(!verify_standard_webhooks("new", "msg_1", 1700000001, b"{}", &header));
/// assert!(!verify_standard_webhooks("other", "msg_1", 1700000000, b"{}", &header));
/// ```
pub fn verify_standard_webhooks(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    signatures: &str,
) -> bool {
    let signed = signed_content(id, timestamp, body);
    let key = standard_webhooks_key(secret);
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|signature| verify(HmacDigest::Sha256, &key, &signed, signature))
}

/// The HMAC key of a secret for Standard Webhooks.
pub fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    match secret
        .strip_prefix("whsec_")
        .map(|b64| STANDARD.decode(b64))
    {
        Some(Ok(key)) => key,
        _ => secret.as_bytes().to_vec(),
    }
}

/// A secret in the `whsec_<base64>` form Standard Webhooks verifiers expect.
pub fn standard_webhooks_secret(secret: &str) -> String {
    if secret.starts_with("whsec_") && STANDARD.decode(&secret[6..]).is_ok() {
        secret.to_owned()
    } else {
        format!("whsec_{}", STANDARD.encode(secret.as_bytes()))
    }
}

const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Length of a generated secret, as in Thorn.
pub const SECRET_LEN: usize = 64;

/// A new random HMAC secret of [`SECRET_LEN`] alphanumeric characters
/// (about 381 bits), drawn from the operating system's CSPRNG.
pub fn generate_secret() -> String {
    let mut out = String::with_capacity(SECRET_LEN);
    let mut buf = [0u8; 96];
    while out.len() < SECRET_LEN {
        getrandom::fill(&mut buf).expect("the operating system's random source is unavailable");
        // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == SECRET_LEN {
                break;
            }
            out.push(SECRET_ALPHABET[(b % 62) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_names_round_trip() {
        for d in [HmacDigest::Sha1, HmacDigest::Sha256, HmacDigest::Sha512] {
            assert_eq!(d.as_str().parse::<HmacDigest>().unwrap(), d);
        }
        let err = "md5".parse::<HmacDigest>().unwrap_err();
        assert!(err.to_string().contains("md5"));
    }

    #[test]
    fn secrets_are_long_random_and_alphanumeric() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
