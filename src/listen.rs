//! Accepts connections and serves HTTP/1.1 and HTTP/2 (cleartext or TLS) on them, with the
//! limits that keep slow or abusive clients from holding the server: a cap on open
//! connections, a time limit for the first bytes, each request's headers and the TLS handshake,
//! a header size limit, a stream limit per HTTP/2 connection, and graceful shutdown.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// When a request's head arrived, before its body was read (a request extension, over HTTP and
/// gRPC alike): deadlines and the latency target count from here.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// Per-connection limits (`--max-connections`, `--header-read-timeout-ms`, ...).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once per listener; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Time for the first bytes of a connection, the TLS handshake, and each HTTP/1 request's
    /// headers (which also closes HTTP/1 connections idle that long).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

/// Loads a PEM certificate chain and private key for `--tls-cert`/`--tls-key`, announcing
/// HTTP/2 and HTTP/1.1 through ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| format!("--tls-cert {}: {error}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("--tls-key {}: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|error| format!("--tls-cert/--tls-key: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets open connections finish
/// their requests (HTTP/1 closes after the response, HTTP/2 sends GOAWAY) and returns when
/// all have closed.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let builder = Arc::new(builder(&limits));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Per-connection failures (reset before accept) are routine; running out
                    // of file descriptors is not, and retrying at once would spin.
                    if !is_connection_error(&error) {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            timeout: limits.header_read_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            connection.run(stream, tls).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // A 600 KB tensor in 16 KiB frames (the default) costs 37 rounds of frame handling;
        // 1 MiB frames cut the p50 of such a request at concurrency 1 by 0.08 ms.
        .max_frame_size(1 << 20)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Finds peers that vanished without closing; a ping unanswered for 20 s drops them.
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// One accepted connection and what it needs to be served.
struct Connection {
    app: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    timeout: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        match tls {
            None => {
                // The protocol is detected from the first bytes, a read with no timer of its
                // own: a client that connects and sends nothing is closed here.
                let mut first = [0u8; 1];
                let peeked = tokio::time::timeout(self.timeout, stream.peek(&mut first)).await;
                if let Ok(Ok(1..)) = peeked {
                    self.serve(stream, None).await;
                }
            }
            Some(acceptor) => {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(self.timeout, acceptor.accept(stream)).await
                else {
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                self.serve(stream, Some(h2)).await;
            }
        }
    }

    /// `alpn_h2`: the version ALPN chose (TLS), or `None` to detect it from the preface.
    async fn serve<I>(self, io: I, alpn_h2: Option<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app;
        let service = TowerToHyperService::new(app.map_request(
            |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Arrival(Instant::now()));
                request.map(axum::body::Body::new)
            },
        ));
        let builder = match alpn_h2 {
            None => (*self.builder).clone(),
            Some(true) => (*self.builder).clone().http2_only(),
            Some(false) => (*self.builder).clone().http1_only(),
        };
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
