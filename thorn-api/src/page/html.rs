//! HTML that cannot show input unescaped: markup comes only from string
//! literals ([`Html::s`] takes `&'static str`), and everything else goes
//! through [`Html::t`], which escapes it for text and quoted attributes.

use std::fmt::{self, Display, Write};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A page being written.
#[derive(Default)]
pub(crate) struct Html(String);

impl Html {
    /// Markup, from the source code only.
    pub(crate) fn s(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Text or an attribute value, escaped: `&`, `<`, `>`, `"` and `'`.
    pub(crate) fn t(&mut self, text: impl Display) -> &mut Self {
        write!(Escaped(&mut self.0), "{text}").expect("writing to a String cannot fail");
        self
    }

    /// The page as an answer with `status`: HTML that loads nothing but
    /// its own style sheet, runs no script, posts forms only to this site
    /// and is never framed or cached.
    pub(crate) fn answer(self, status: StatusCode) -> Response {
        let mut response = (status, self.0).into_response();
        let headers = response.headers_mut();
        for (name, value) in [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// Writes what it is given with HTML's special characters escaped.
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// The page's style sheet, served beside it.
pub(crate) const STYLE: &str = "\
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem 1.5rem;color:#1b1b1b}
header{display:flex;justify-content:space-between;align-items:baseline;border-bottom:1px solid #ddd;margin-bottom:1rem}
h1{font-size:1.4rem;margin:.4rem 0}h2{font-size:1.1rem;margin-top:1.6rem}
a{color:#0b5cad}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
th{font-weight:600;color:#555}td.url,code{word-break:break-all}
form.inline{display:inline}button{font:inherit;padding:.2rem .6rem;cursor:pointer}
button.danger{color:#a10d0d}
fieldset{border:1px solid #ddd;padding:.8rem 1rem}label{display:block;margin:.4rem 0}
input[type=text],input[type=url]{width:28rem;max-width:100%;font:inherit}
.notice{background:#eaf5ea;border:1px solid #b7dcb7;padding:.5rem .8rem}
.error{background:#fbeaea;border:1px solid #e3b5b5;padding:.5rem .8rem}
.state-delivered{color:#17702b}.state-dead{color:#a10d0d}.state-pending{color:#8a5b00}
pre{white-space:pre-wrap;word-break:break-all;margin:0;max-height:12rem;overflow:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{color:#555}dd{margin:0}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_markup_is_not() {
        let mut page = Html::default();
        page.s("<p title=\"")
            .t("\"><script>alert('x')</script>&")
            .s("\">")
            .t(42)
            .s("</p>");
        assert_eq!(
            page.0,
            "<p title=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\">42</p>"
        );
    }
}
