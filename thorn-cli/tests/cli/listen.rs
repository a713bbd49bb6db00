//! `thorn listen` checks what it receives: a real delivery of a model
//! event verifies, a forged one fails, and the exit status says so.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, Subscriber, Thorn, WebhookModel};

diesel::table! {
    articles (id) {
        id -> Integer,
        title -> Text,
    }
}

#[derive(Queryable, Selectable, WebhookModel)]
#[diesel(table_name = articles)]
#[webhook_model(payload = Self::payload, on_create = "article.created")]
struct Article {
    id: i32,
    title: String,
}

impl Article {
    fn payload(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id, "title": self.title })
    }
}

/// Sends one `article.created` to `url`, signed with `secret`.
fn deliver(url: &str, secret: &str) {
    let store = MemoryStore::new();
    store.add(
        Subscriber::new("article.*", url)
            .unwrap()
            .with_secret(secret),
    );
    let config = Config {
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        standard_webhooks: true,
        ..Config::default()
    };
    let thorn = Thorn::builder(config).store(store).build().unwrap();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
        .execute(&mut conn)
        .unwrap();
    let _: Article = diesel::insert_into(articles::table)
        .values(articles::title.eq("Hello"))
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
    assert!(thorn.drain(Duration::from_secs(10)).is_complete());
}

#[test]
fn listen_verifies_a_real_delivery_and_reports_a_forged_one() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_thorn"))
        .args(["listen", "--addr", "127.0.0.1:0", "--secret", "s3cret"])
        .args(["--count", "2", "--status", "202"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();

    deliver(&url, "s3cret");
    deliver(&url, "not-the-secret");

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("thorn listen did not exit after two requests");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut printed = String::new();
    out.read_to_string(&mut printed).unwrap();
    let reports: Vec<&str> = printed.split("── ").filter(|r| !r.is_empty()).collect();
    assert_eq!(reports.len(), 2, "{printed}");
    let (real, forged) = (reports[0], reports[1]);
    assert!(real.starts_with("POST / article.created"), "{real}");
    assert!(real.contains("Hook-HMAC: verified (sha256)"), "{real}");
    assert!(real.contains("Standard Webhooks: verified"), "{real}");
    assert!(real.contains("\"title\": \"Hello\""), "{real}");
    assert!(forged.contains("Hook-HMAC: FAILED"), "{forged}");
    assert!(forged.contains("Standard Webhooks: FAILED"), "{forged}");
    assert!(
        !status.success(),
        "a forged delivery makes listen exit non-zero"
    );
}

#[test]
fn sign_and_verify_agree_and_verify_refuses_a_changed_body() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"event":"a.b"}"#).unwrap();
    let thorn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_thorn"))
            .args(args)
            .output()
            .unwrap()
    };
    let body = body.to_str().unwrap();
    let signed = thorn(&["sign", "--secret", "k", body]);
    assert!(signed.status.success());
    let signature = String::from_utf8(signed.stdout).unwrap().trim().to_owned();
    assert_eq!(
        signature,
        thorn::signing::sign(thorn::HmacDigest::Sha256, b"k", br#"{"event":"a.b"}"#)
    );
    let ok = thorn(&["verify", "--secret", "k", "--signature", &signature, body]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verified (sha256)"));

    std::fs::write(dir.path().join("body.json"), br#"{"event":"a.c"}"#).unwrap();
    let bad = thorn(&["verify", "--secret", "k", "--signature", &signature, body]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not match"));

    let wrong = thorn(&["sign", "--digest", "md5", "--secret", "k", body]);
    assert!(
        !wrong.status.success(),
        "an unknown digest is an argument error"
    );
}
