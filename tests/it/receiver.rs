//! A real webhook receiver on 127.0.0.1:0 that records every request.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("request has no {name} header: {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// Runs on its own thread and runtime, so synchronous (Diesel) tests can
/// use it as well as async ones.
pub(crate) struct Receiver {
    pub(crate) url: String,
    rx: mpsc::Receiver<Received>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn record(
    State(tx): State<mpsc::Sender<Received>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let _ = tx.send(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    StatusCode::OK
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(record).with_state(tx);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver started");
        Receiver {
            url: format!("http://{addr}/hooks/"),
            rx,
            _stop: stop_tx,
        }
    }

    /// Exactly `n` requests: waits up to `within` for them, then a short
    /// grace period to make sure no extra one arrives.
    pub(crate) fn expect(&self, n: usize, within: Duration) -> Vec<Received> {
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
        if let Ok(extra) = self.rx.recv_timeout(Duration::from_millis(200)) {
            panic!("expected exactly {n} requests, got another: {extra:#?}");
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
