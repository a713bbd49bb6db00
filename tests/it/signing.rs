//! Hook-HMAC signatures match Python Thorn's, byte for byte.
//!
//! The expected strings were computed once with Python 3.11's standard
//! library (`base64.b64encode(hmac.new(secret, body, hashlib.<d>).digest())`)
//! and, for `compat_sign`, with `itsdangerous.Signer(secret,
//! digest_method=hashlib.<d>).get_signature(body)` (itsdangerous 2.2.0).

use thorn::signing::{HmacDigest, compat_sign, sign, verify};

const SECRET: &[u8] = b"C=JTX)v3~dQCl];[_h[{q{CScm}oglLoe&>ga:>R~jR$.x?t|kW!FH:s@|4bu:11";
const BODY: &[u8] = br#"{"event": "article.created", "ref": "https://example.com/article/1/", "sender": null, "data": {"title": "Hello"}}"#;

const VECTORS: [(HmacDigest, &str, &str); 3] = [
    (
        HmacDigest::Sha1,
        "E2do6Atq6lYEAF/okajkIPjr7Ac=",
        "Co8P1jDpO_9epUy9aeHcDvOYCYw",
    ),
    (
        HmacDigest::Sha256,
        "TlORcDBhmGtN/hym9ZK6Vk6OaWqjy5v9d40D8gFS7uE=",
        "rrxdZuSw2d7fURf2RgHKlpZuyQh68Ig1tDQEG9UqNDM",
    ),
    (
        HmacDigest::Sha512,
        "khHuIEBKMnViukiQbZtYgDxDSidXxu0vGp0NH8B8VwbznBiAF3iB6zEuUZmKcVVnGzKP1pW19j/djO2Z4IxrzQ==",
        "HewZNJhHKeCtu-UhgcJIOM4FK8l8r8d3sJAw4DN0xGr0cmmc7nEHajN7grBAQyQtfywL0mjjG3c0tg7LtO-XMg",
    ),
];

#[test]
fn sign_matches_python_thorn() {
    for (digest, expected, _) in VECTORS {
        assert_eq!(sign(digest, SECRET, BODY), expected, "{digest}");
    }
}

#[test]
fn compat_sign_matches_itsdangerous() {
    for (digest, _, expected) in VECTORS {
        assert_eq!(compat_sign(digest, SECRET, BODY), expected, "{digest}");
    }
}

#[test]
fn verify_accepts_the_right_signature_only() {
    for (digest, expected, _) in VECTORS {
        assert!(verify(digest, SECRET, BODY, expected), "{digest}");
        let mut changed = BODY.to_vec();
        changed[3] ^= 1;
        assert!(
            !verify(digest, SECRET, &changed, expected),
            "{digest}: changed body"
        );
        assert!(
            !verify(digest, b"other secret", BODY, expected),
            "{digest}: other secret"
        );
        assert!(
            !verify(digest, SECRET, BODY, "not base64!"),
            "{digest}: garbage"
        );
    }
    // A signature made with one digest does not pass as another.
    assert!(!verify(HmacDigest::Sha512, SECRET, BODY, VECTORS[1].1));
}
