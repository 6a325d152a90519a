//! Serving HTTP/1 on a listener wicket owns (the admin endpoint on TCP and
//! on its unix socket, the admission webhook over TLS), with the limits
//! every such listener needs against clients that connect and then do
//! nothing:
//!
//! - at most `max_connections` at once: past that, connections wait in the
//!   kernel's backlog instead of taking file descriptors; and at most
//!   `per_peer` from one address, past which a connection is closed at
//!   once (so one client cannot take every slot and keep kubelet's probes
//!   or the API server out);
//! - a deadline on the TLS handshake and on each request's headers (which
//!   is also how long an idle keep-alive connection stays open);
//! - a longest life per connection, after which it is closed gracefully
//!   (the request in flight is answered first);
//! - a growing pause after each failed `accept()` (out of file
//!   descriptors, say) instead of a busy loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// What one listener allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections from one address (TCP), at once.
    pub per_peer: usize,
    /// For the TLS handshake, when there is one.
    pub handshake_timeout: Duration,
    /// For each request's headers, counted from when the connection is
    /// ready for a request (so also the idle time between requests).
    pub header_timeout: Duration,
    /// Longest a connection lives.
    pub max_lifetime: Duration,
}

/// The admin endpoint: probes, scrapes and inspection, all short.
pub const ADMIN: Limits = Limits {
    max_connections: 64,
    per_peer: 16,
    handshake_timeout: Duration::from_secs(10),
    header_timeout: Duration::from_secs(5),
    max_lifetime: Duration::from_secs(60),
};

/// The admission webhook: the API server's calls (each answered within 5 s).
pub const WEBHOOK: Limits = Limits {
    max_connections: 64,
    per_peer: 48,
    handshake_timeout: Duration::from_secs(10),
    header_timeout: Duration::from_secs(10),
    max_lifetime: Duration::from_secs(60),
};

/// Least and most pause after a failed `accept()`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));
/// How long a connection at the end of its life may take to finish the
/// request it is serving.
const DRAIN: Duration = Duration::from_secs(10);

/// A listener that yields byte streams, and the peer's address where
/// there is one.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &mut self,
    ) -> impl Future<Output = std::io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(s, a)| (s, Some(a.ip())))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(s, _)| (s, None))
    }
}

/// Connections open per peer address.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    /// Counts a connection from `ip` in, unless it already has `max`.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().expect("peers lock");
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), ip))
    }
}

/// One connection counted against its peer; counted out when dropped.
struct PeerSlot(Arc<Peers>, IpAddr);

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().expect("peers lock");
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves `app` on `listener` in the background, until the process exits.
/// `name` names the listener in log lines.
pub fn spawn<L: Accept>(
    mut listener: L,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    name: &'static str,
) {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let peers = Arc::new(Peers::default());
        let mut pause = ACCEPT_BACKOFF.0;
        loop {
            // Wait for room before accepting: the connections past the cap
            // stay in the backlog, costing wicket nothing.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (io, peer) = match listener.accept().await {
                Ok(accepted) => {
                    pause = ACCEPT_BACKOFF.0;
                    accepted
                }
                Err(e) => {
                    warn!(listener = name, error = %e, pause_ms = pause.as_millis() as u64, "accept failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            let slot = match peer {
                Some(ip) => match peers.enter(ip, limits.per_peer) {
                    Some(slot) => Some(slot),
                    None => {
                        debug!(listener = name, %ip, "too many connections from one address; closed");
                        continue;
                    }
                },
                None => None,
            };
            let (tls, app) = (tls.clone(), app.clone());
            tokio::spawn(async move {
                let _held = (permit, slot);
                match tls {
                    None => serve(io, limits, app).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io))
                            .await
                        {
                            Ok(Ok(stream)) => serve(stream, limits, app).await,
                            Ok(Err(e)) => {
                                debug!(listener = name, error = %e, "TLS handshake failed")
                            }
                            Err(_) => debug!(listener = name, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
}

/// One connection, within its limits.
async fn serve<I>(io: I, limits: Limits, app: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(limits.max_lifetime) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}
