//! The page's forms carry a token only this server could have made for
//! this user, recently: `{seconds}.{HMAC-SHA256(key, user, seconds)}`. A
//! form posted from another site has no such token (and is refused on its
//! `Origin` or `Sec-Fetch-Site` too, where the browser sends them).

use axum::http::HeaderMap;
use thorn_core::SenderId;
use thorn_core::signing::{self, HmacDigest};

/// How long a page's forms stay valid.
const VALID_FOR_SECS: i64 = 12 * 60 * 60;

/// The message a token signs.
fn message(user: &SenderId, issued: i64) -> Vec<u8> {
    let user = serde_json::to_string(user).unwrap_or_default();
    format!("thorn-page-form\n{user}\n{issued}").into_bytes()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token for `user`'s forms.
pub(crate) fn token(key: &[u8], user: &SenderId) -> String {
    let issued = now();
    let mac = signing::sign(HmacDigest::Sha256, key, &message(user, issued));
    format!("{issued}.{mac}")
}

/// Whether `token` is one [`token`] made for `user` in the last twelve
/// hours.
pub(crate) fn valid(key: &[u8], user: &SenderId, token: &str) -> bool {
    let Some((issued, mac)) = token.split_once('.') else {
        return false;
    };
    let Ok(issued) = issued.parse::<i64>() else {
        return false;
    };
    let Some(age) = now().checked_sub(issued) else {
        return false;
    };
    (-60..VALID_FOR_SECS).contains(&age)
        && signing::verify(HmacDigest::Sha256, key, &message(user, issued), mac)
}

/// Whether the browser says the request comes from another site. A
/// browser that sends `Sec-Fetch-Site` is believed (`same-origin` and
/// `none` pass, whatever a proxy did to `Host`); otherwise an `Origin`
/// other than this server's `origins` is another site's, and a request
/// with neither (an older browser, or no browser) is not.
pub(crate) fn cross_site(headers: &HeaderMap, origins: &[Option<&str>]) -> bool {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    match header("sec-fetch-site") {
        Some("same-origin" | "none") => return false,
        Some("cross-site") => return true,
        _ => {}
    }
    match header("origin") {
        None => false,
        Some(origin) => !origins
            .iter()
            .flatten()
            .any(|o| o.eq_ignore_ascii_case(origin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_for_its_user_and_key_only() {
        let alice = SenderId::from(1);
        let t = token(b"key", &alice);
        assert!(valid(b"key", &alice, &t));
        assert!(!valid(b"key", &SenderId::from(2), &t));
        assert!(!valid(b"other key", &alice, &t));
        assert!(!valid(b"key", &alice, "1.x"));
        assert!(!valid(b"key", &alice, ""));
        assert!(!valid(b"key", &alice, "-9223372036854775808.x"));
        let old = now() - VALID_FOR_SECS - 1;
        let mac = signing::sign(HmacDigest::Sha256, b"key", &message(&alice, old));
        assert!(!valid(b"key", &alice, &format!("{old}.{mac}")));
    }

    #[test]
    fn another_sites_origin_is_cross_site() {
        let mut h = HeaderMap::new();
        let here = [Some("http://127.0.0.1:8000"), None];
        assert!(!cross_site(&h, &here), "no Origin: an older browser");
        h.insert("origin", "http://127.0.0.1:8000".parse().unwrap());
        assert!(!cross_site(&h, &here));
        h.insert("origin", "http://evil.test".parse().unwrap());
        assert!(cross_site(&h, &here));
        h.insert("origin", "null".parse().unwrap());
        assert!(cross_site(&h, &here));
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(
            cross_site(&h, &here),
            "a sibling subdomain is another origin"
        );
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(!cross_site(&h, &here), "behind a proxy that rewrote Host");
        h.remove("origin");
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h, &here));
    }
}
