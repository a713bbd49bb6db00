//! `thorn listen`, `thorn sign` and `thorn verify`: seeing and checking
//! webhooks by hand, with no database.

use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use clap::Args;
use thorn::HmacDigest;
use thorn::signing::{
    compat_sign, sign, standard_webhooks_signature, verify, verify_standard_webhooks,
};
use tokio::sync::Notify;

use crate::Failure;

const DIGESTS: [HmacDigest; 3] = [HmacDigest::Sha256, HmacDigest::Sha1, HmacDigest::Sha512];

/// `thorn listen`.
#[derive(Args)]
pub(crate) struct ListenArgs {
    /// Where to listen; port 0 picks a free one (the first line printed
    /// names it).
    #[arg(long, default_value = "127.0.0.1:8787")]
    addr: SocketAddr,
    /// The subscription's secret, to check `Hook-HMAC` and Standard
    /// Webhooks signatures with; repeat it for a secret being rotated.
    /// Without one, signatures are shown but not checked.
    #[arg(long = "secret", env = "THORN_LISTEN_SECRET", value_name = "SECRET")]
    secrets: Vec<String>,
    /// The status to answer with: a 5xx or 429 makes the sender retry, a
    /// 410 makes it drop the subscription.
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Exit after this many requests (default: run until Ctrl-C). The
    /// exit status is 1 when a signature that was checked did not verify.
    #[arg(long)]
    count: Option<usize>,
}

/// `thorn sign`.
#[derive(Args)]
pub(crate) struct SignArgs {
    /// The subscription's secret.
    #[arg(long, env = "THORN_SIGN_SECRET")]
    secret: String,
    /// The digest of the subscription (`sha256`, `sha1`, `sha512`).
    #[arg(long, default_value = "sha256")]
    digest: HmacDigest,
    /// Python Thorn's legacy itsdangerous signer (`THORN_HMAC_SIGNER=compat_sign`).
    #[arg(long)]
    compat: bool,
    #[command(flatten)]
    signed: Signed,
}

/// `thorn verify`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The subscription's secret.
    #[arg(long, env = "THORN_SIGN_SECRET")]
    secret: String,
    /// The `Hook-HMAC` value to check (with `--webhook-id`, the
    /// `webhook-signature` value).
    #[arg(long)]
    signature: String,
    /// The digest (default: whichever of sha256, sha1, sha512 matches).
    #[arg(long)]
    digest: Option<HmacDigest>,
    #[command(flatten)]
    signed: Signed,
}

/// What `sign` and `verify` work on: a body, and for Standard Webhooks the
/// message id and timestamp signed with it.
#[derive(Args)]
pub(crate) struct Signed {
    /// Standard Webhooks instead of `Hook-HMAC`: the `webhook-id` signed
    /// (with `--timestamp`).
    #[arg(long, requires = "timestamp")]
    webhook_id: Option<String>,
    /// The `webhook-timestamp` (seconds since the Unix epoch) for `--webhook-id`.
    #[arg(long, requires = "webhook_id")]
    timestamp: Option<i64>,
    /// The body: a file, or `-` (the default) for standard input.
    #[arg(default_value = "-")]
    body: String,
}

/// A Standard Webhooks message id and timestamp.
type IdAndTime<'a> = Option<(&'a str, i64)>;

impl Signed {
    /// The body, and the Standard Webhooks id and timestamp when given.
    fn read(&self) -> Result<(Vec<u8>, IdAndTime<'_>), Failure> {
        let standard = match (&self.webhook_id, self.timestamp) {
            (Some(id), Some(at)) => Some((id.as_str(), at)),
            _ => None,
        };
        Ok((read_body(&self.body)?, standard))
    }
}

fn read_body(from: &str) -> Result<Vec<u8>, Failure> {
    if from == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        Ok(body)
    } else {
        std::fs::read(from).map_err(|e| format!("cannot read {from}: {e}").into())
    }
}

pub(crate) fn sign_command(args: SignArgs) -> Result<(), Failure> {
    let (body, standard) = args.signed.read()?;
    let signature = match standard {
        Some((id, at)) => standard_webhooks_signature([args.secret.as_str()], id, at, &body),
        _ if args.compat => compat_sign(args.digest, args.secret.as_bytes(), &body),
        _ => sign(args.digest, args.secret.as_bytes(), &body),
    };
    println!("{signature}");
    Ok(())
}

pub(crate) fn verify_command(args: VerifyArgs) -> Result<(), Failure> {
    let (body, standard) = args.signed.read()?;
    let verdict = match standard {
        Some((id, at)) => verify_standard_webhooks(&args.secret, id, at, &body, &args.signature)
            .then(|| "Standard Webhooks".to_owned()),
        _ => hook_hmac(&[args.secret], &body, &args.signature, args.digest),
    };
    match verdict {
        Some(how) => {
            println!("verified ({how})");
            Ok(())
        }
        None => Err("the signature does not match this body and secret".into()),
    }
}

/// Which signer and digest made `signature` with one of `secrets`.
fn hook_hmac(
    secrets: &[String],
    body: &[u8],
    signature: &str,
    digest: Option<HmacDigest>,
) -> Option<String> {
    let digests: Vec<HmacDigest> = digest.map_or(DIGESTS.to_vec(), |d| vec![d]);
    for secret in secrets {
        for &d in &digests {
            if verify(d, secret.as_bytes(), body, signature) {
                return Some(format!("{d}"));
            }
            if compat_sign(d, secret.as_bytes(), body) == signature.trim() {
                return Some(format!("{d}, compat_sign"));
            }
        }
    }
    None
}

struct Listener {
    secrets: Vec<String>,
    status: StatusCode,
    seen: AtomicUsize,
    count: Option<usize>,
    failed: AtomicBool,
    done: Notify,
}

pub(crate) fn listen(args: ListenArgs) -> Result<(), Failure> {
    let status = StatusCode::from_u16(args.status)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
        .ok_or_else(|| {
            format!(
                "--status {}: answer with a status from 200 to 599",
                args.status
            )
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = Arc::new(Listener {
        secrets: args.secrets,
        status,
        seen: AtomicUsize::new(0),
        count: args.count,
        failed: AtomicBool::new(false),
        done: Notify::new(),
    });
    let state = listener.clone();
    runtime.block_on(async move {
        let socket = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        println!(
            "listening on http://{} (answering {}{})",
            socket.local_addr()?,
            status.as_u16(),
            if state.secrets.is_empty() {
                "; signatures not checked: no --secret"
            } else {
                ""
            }
        );
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let stop = state.clone();
        axum::serve(socket, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = stop.done.notified() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await?;
        Ok::<(), Failure>(())
    })?;
    if listener.failed.load(Ordering::Acquire) {
        return Err("a delivery's signature did not verify".into());
    }
    Ok(())
}

async fn receive(
    State(listener): State<Arc<Listener>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (report, ok) = describe(&listener.secrets, &method, &uri, &headers, &body);
    println!("{report}");
    if !ok {
        listener.failed.store(true, Ordering::Release);
    }
    let seen = listener.seen.fetch_add(1, Ordering::AcqRel) + 1;
    if listener.count.is_some_and(|n| seen >= n) {
        listener.done.notify_one();
    }
    listener.status
}

/// What a request was, its signatures' verdicts, and whether every one
/// checked verified.
fn describe(
    secrets: &[String],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (String, bool) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut out = format!(
        "── {method} {uri} {}",
        header("hook-event").unwrap_or("(no Hook-Event)")
    );
    for (name, value) in headers {
        let _ = write!(
            out,
            "\n  {name}: {}",
            value.to_str().unwrap_or("(not text)")
        );
    }
    let mut ok = true;
    let mut verdict = |what: &str, result: Option<Option<String>>| {
        let line = match result {
            None => "not sent".to_owned(),
            Some(_) if secrets.is_empty() => "not checked (no --secret)".to_owned(),
            Some(Some(how)) => format!("verified ({how})"),
            Some(None) => {
                ok = false;
                "FAILED: does not match this body with the given secret(s)".to_owned()
            }
        };
        let _ = write!(out, "\n  {what}: {line}");
    };
    verdict(
        "Hook-HMAC",
        header("hook-hmac").map(|sig| hook_hmac(secrets, body, sig, None)),
    );
    let standard = header("webhook-signature").map(|sig| {
        let id = header("webhook-id").unwrap_or_default();
        let at = header("webhook-timestamp").and_then(|t| t.parse().ok())?;
        secrets
            .iter()
            .any(|s| verify_standard_webhooks(s, id, at, body, sig))
            .then(|| "sha256".to_owned())
    });
    verdict("Standard Webhooks", standard);
    let shown = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let _ = write!(out, "\n{shown}");
    (out, ok)
}
