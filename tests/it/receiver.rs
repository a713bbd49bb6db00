//! A real webhook receiver on 127.0.0.1:0 that records every request and
//! answers from a script: a status (with headers), a hang past the
//! client's timeout, or a connection reset. Plain HTTP/1.1 over TCP, so
//! the test controls the connection itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the receiver answers one request.
#[derive(Debug, Clone)]
#[allow(dead_code)] // each test module uses a different subset
pub(crate) enum Reply {
    Status(u16),
    StatusWith(u16, Vec<(&'static str, String)>),
    Hang(Duration),
    Reset,
    /// 200, after a pause.
    Slow(Duration),
}

/// Runs on each request's body as it arrives, before the answer; what it
/// returns is kept in [`Received::probe`].
pub(crate) type Probe = Box<dyn Fn(&[u8]) -> String + Send + Sync>;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) at: Instant,
    /// What the receiver's probe saw when the request arrived.
    pub(crate) probe: Option<String>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("request has no {name} header: {:?}", self.headers))
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

struct Shared {
    tx: Mutex<mpsc::Sender<Received>>,
    script: Mutex<VecDeque<Reply>>,
    connections: AtomicUsize,
    probe: Option<Probe>,
    /// Used for every request once the script is spent.
    default: Reply,
}

pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) port: u16,
    rx: mpsc::Receiver<Received>,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + len {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + len].to_vec();
    buf.drain(..body_start + len);
    Some((path, headers, body))
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while let Some((path, headers, body)) = read_request(&mut stream, &mut buf).await {
        let close = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let reply = shared
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| shared.default.clone());
        let probe = shared.probe.as_ref().map(|p| p(&body));
        let _ = shared.tx.lock().unwrap().send(Received {
            path,
            headers,
            body,
            at: Instant::now(),
            probe,
        });
        let (status, extra) = match reply {
            Reply::Status(s) => (s, Vec::new()),
            Reply::Slow(d) => {
                tokio::time::sleep(d).await;
                (200, Vec::new())
            }
            Reply::StatusWith(s, h) => (s, h),
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                return;
            }
            Reply::Reset => {
                // Zero linger makes close send a RST at once; nothing blocks.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
        };
        let mut response = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n");
        for (n, v) in extra {
            response.push_str(&format!("{n}: {v}\r\n"));
        }
        response.push_str("\r\nok");
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

impl Receiver {
    /// Answers 200 to everything.
    pub(crate) fn start() -> Receiver {
        Self::scripted([])
    }

    /// Answers with `script` in order, then 200.
    pub(crate) fn scripted(script: impl IntoIterator<Item = Reply>) -> Receiver {
        Self::build(script.into_iter().collect(), None, Reply::Status(200))
    }

    /// Answers 200 to everything, running `probe` on each body first.
    #[allow(dead_code)]
    pub(crate) fn probing(probe: impl Fn(&[u8]) -> String + Send + Sync + 'static) -> Receiver {
        Self::build(VecDeque::new(), Some(Box::new(probe)), Reply::Status(200))
    }

    /// Answers every request with `reply`.
    #[allow(dead_code)]
    pub(crate) fn always(reply: Reply) -> Receiver {
        Self::build(VecDeque::new(), None, reply)
    }

    fn build(script: VecDeque<Reply>, probe: Option<Probe>, default: Reply) -> Receiver {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tx: Mutex::new(tx),
            script: Mutex::new(script),
            connections: AtomicUsize::new(0),
            probe,
            default,
        });
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = mpsc::channel();
        let server_shared = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { break };
                            server_shared.connections.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(serve(stream, server_shared.clone()));
                        }
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver started");
        Receiver {
            url: format!("http://{addr}/hooks/"),
            port: addr.port(),
            rx,
            shared,
            _stop: stop_tx,
        }
    }

    /// TCP connections accepted so far.
    #[allow(dead_code)]
    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Exactly `n` requests: waits up to `within` for them, then a short
    /// grace period to make sure no extra one arrives.
    pub(crate) fn expect(&self, n: usize, within: Duration) -> Vec<Received> {
        let got = self.first(n, within);
        if let Ok(extra) = self.rx.recv_timeout(Duration::from_millis(200)) {
            panic!("expected exactly {n} requests, got another: {extra:#?}");
        }
        got
    }

    /// The first `n` requests, waiting up to `within` for them.
    pub(crate) fn first(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(r) => got.push(r),
                Err(_) => panic!(
                    "expected {n} requests within {within:?}, got {}: {got:#?}",
                    got.len()
                ),
            }
        }
        got
    }

    /// Every request arriving until none has for `quiet` (at most `limit`
    /// in all).
    #[allow(dead_code)]
    pub(crate) fn until_quiet(&self, quiet: Duration, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while let Ok(r) = self
            .rx
            .recv_timeout(quiet.min(deadline.saturating_duration_since(Instant::now())))
        {
            got.push(r);
        }
        got
    }

    /// Nothing arrives within `within`.
    pub(crate) fn expect_none(&self, within: Duration) {
        if let Ok(r) = self.rx.recv_timeout(within) {
            panic!("expected no request, got {r:#?}");
        }
    }
}
