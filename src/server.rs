//! Wires the server together: ONNX Runtime, models, listeners, and the shutdown sequence
//! (not-ready at once, keep accepting for the drain period, then finish in-flight requests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backend::ort as ort_backend;
use crate::config::{ServeConfig, available_cores};
use crate::http::{self, AppState};
use crate::listen::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::service::registry::{self, LoadOptions};
use crate::service::{Classifier, PreprocessPool};

/// A started server.
pub struct RunningServer {
    /// Where REST is served.
    pub http_address: SocketAddr,
    /// Where gRPC is served (the HTTP address in single-port mode).
    pub grpc_address: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_address: SocketAddr,
    /// The facade (readiness, models).
    pub classifier: Arc<Classifier>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Begins the shutdown sequence (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task failed")?
    }
}

/// Loads the models and starts serving; returns once listeners are bound and models loaded.
pub async fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    config.validate().map_err(anyhow::Error::msg)?;
    let tls = match (&config.network.tls_cert, &config.network.tls_key) {
        (Some(cert), Some(key)) => {
            Some(listen::tls_acceptor(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let library = ort_backend::library_path(config.runtime.ort_lib.as_deref());
    let ort_version = ort_backend::init(&library)?;
    tracing::info!(library = %library.display(), version = %ort_version, "ONNX Runtime loaded");

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let cores = available_cores();
    let pool = PreprocessPool::new(
        config.runtime.preprocess_threads.unwrap_or(cores),
        config.image_limits(),
        metrics.clone(),
    );
    let options = LoadOptions {
        root: config.model_repository.clone(),
        default_model: config.default_model.clone(),
        defaults: config.server_defaults(),
        allow_cpu_fallback: config.runtime.allow_cpu_fallback,
        intra_op_threads: config.runtime.intra_op_threads,
        model_control: config.lifecycle.enable_model_control,
        target_p99: config.batching.target_p99_ms.map(Duration::from_millis),
        cpu_arena: config.runtime.cpu_arena,
        intra_op_spinning: config.runtime.intra_op_spinning,
    };
    let registry = registry::load(&options, &pool, &metrics)
        .await
        .map_err(anyhow::Error::msg)?;
    let registry = Arc::new(registry);
    if let Some(failure) = registry.first_failure() {
        if config.lifecycle.exit_on_error {
            registry.shutdown().await;
            anyhow::bail!("{failure} (pass --exit-on-error=false to serve the other models)");
        }
        tracing::warn!(%failure, "serving without this model (--exit-on-error=false)");
    }
    let provider = registry
        .snapshot()
        .values()
        .flat_map(|versions| {
            versions
                .values()
                .filter_map(|entry| entry.loaded.as_ref().map(|m| m.device))
        })
        .next()
        .map_or_else(
            || config.runtime.device.to_string(),
            |device| device.to_string(),
        );
    let provider = if provider.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    };
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &ort_version, provider])
        .set(1);

    let classifier = Arc::new(Classifier::new(
        registry.clone(),
        pool,
        metrics.clone(),
        config.lifecycle.strict_readiness,
    ));
    let state = AppState {
        classifier: classifier.clone(),
        metrics: metrics.clone(),
        body_limits: http::body::BodyLimits {
            max_bytes: config.limits.max_body_bytes,
            read_timeout: Duration::from_millis(config.limits.body_read_timeout_ms),
        },
        in_flight: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
        max_concurrent_requests: config.limits.max_concurrent_requests,
        api_key: config.limits.api_key.as_deref().map(Arc::from),
        web: crate::http::WebOptions {
            web_ui: !config.network.no_web_ui,
            cors_allow_origin: config.network.cors_allow_origin.clone(),
        },
        openapi: Arc::from(""),
    };
    let grpc_options = crate::grpc::GrpcOptions {
        max_message_bytes: config.network.grpc_max_message_bytes,
        api_key: config.limits.api_key.as_deref().map(Arc::from),
    };
    let (grpc_routes, health) =
        crate::grpc::routes(classifier.clone(), metrics.clone(), &grpc_options)
            .await
            .context("building gRPC services")?;
    let host = config.network.host;
    let http_listener = TcpListener::bind((host, config.network.http_port))
        .await
        .with_context(|| format!("binding --http-port {}", config.network.http_port))?;
    let grpc_listener = if config.single_port() {
        None
    } else {
        Some(
            TcpListener::bind((host, config.network.grpc_port))
                .await
                .with_context(|| format!("binding --grpc-port {}", config.network.grpc_port))?,
        )
    };
    let metrics_listener = TcpListener::bind((host, config.network.metrics_port))
        .await
        .with_context(|| format!("binding --metrics-port {}", config.network.metrics_port))?;
    let http_address = http_listener.local_addr()?;
    let metrics_address = metrics_listener.local_addr()?;
    let grpc_address = match &grpc_listener {
        Some(listener) => listener.local_addr()?,
        None => http_address,
    };
    tracing::info!(%http_address, %grpc_address, %metrics_address, "listening");

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        Listeners {
            http: http_listener,
            grpc: grpc_listener,
            metrics: metrics_listener,
            tls,
            limits: config.connection_limits(),
        },
        state,
        (grpc_routes, health),
        shutdown.clone(),
        Timeouts {
            drain: Duration::from_secs(config.lifecycle.drain_seconds),
            shutdown: Duration::from_secs(config.lifecycle.shutdown_timeout_seconds),
            poll: Duration::from_secs(config.lifecycle.repository_poll_seconds),
        },
    ));
    Ok(RunningServer {
        http_address,
        grpc_address,
        metrics_address,
        classifier,
        shutdown,
        task,
    })
}

struct Listeners {
    http: TcpListener,
    /// `None` in single-port mode.
    grpc: Option<TcpListener>,
    metrics: TcpListener,
    /// `--tls-cert`/`--tls-key` for REST and gRPC.
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
}

struct Timeouts {
    drain: Duration,
    shutdown: Duration,
    /// Repository poll interval; zero = off.
    poll: Duration,
}

async fn serve(
    listeners: Listeners,
    state: AppState,
    (grpc_routes, health): (tonic::service::Routes, tonic_health::server::HealthReporter),
    shutdown: CancellationToken,
    timeouts: Timeouts,
) -> anyhow::Result<()> {
    let stop_accepting = CancellationToken::new();
    let classifier = state.classifier.clone();
    let metrics = state.metrics.clone();
    let rest = http::router(state);
    let serve_on = |listener, app, tls, stop: &CancellationToken| {
        tokio::spawn(listen::serve(
            listener,
            app,
            tls,
            listeners.limits.clone(),
            stop.clone(),
        ))
    };
    let (app, grpc_task) = match listeners.grpc {
        None => (by_content_type(rest, grpc_routes.into_axum_router()), None),
        // Served by the same hyper stack as REST (h2c), so the request deadline from
        // `grpc-timeout` is enforced by the batcher and answered DEADLINE_EXCEEDED.
        Some(listener) => {
            let grpc = grpc_routes.into_axum_router();
            let task = serve_on(listener, grpc, listeners.tls.clone(), &stop_accepting);
            (rest, Some(task))
        }
    };
    let mut http_task = serve_on(listeners.http, app, listeners.tls.clone(), &stop_accepting);
    let metrics_router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let metrics_stop = CancellationToken::new();
    let metrics_task = serve_on(listeners.metrics, metrics_router, None, &metrics_stop);

    let poller = spawn_poller(classifier.clone(), timeouts.poll);
    tokio::select! {
        () = shutdown.cancelled() => {}
        result = &mut http_task => {
            result.context("HTTP server task")?;
        }
    }
    tracing::info!(
        drain_seconds = timeouts.drain.as_secs(),
        "shutting down: not ready, draining"
    );
    classifier.start_draining();
    crate::grpc::set_serving(&health, false).await;
    tokio::time::sleep(timeouts.drain).await;
    tracing::info!("no longer accepting; finishing in-flight requests");
    stop_accepting.cancel();
    if !http_task.is_finished() {
        match tokio::time::timeout(timeouts.shutdown, &mut http_task).await {
            Ok(result) => result.context("HTTP server task")?,
            Err(_) => {
                tracing::warn!("shutdown timeout reached with requests still in flight");
                http_task.abort();
            }
        }
    }
    if let Some(grpc_task) = grpc_task {
        match tokio::time::timeout(timeouts.shutdown, grpc_task).await {
            Ok(result) => result.context("gRPC server task")?,
            Err(_) => tracing::warn!("shutdown timeout reached with gRPC calls still in flight"),
        }
    }
    poller.abort();
    classifier.registry().shutdown().await;
    metrics_stop.cancel();
    metrics_task.await.context("metrics task")?;
    tracing::info!("stopped");
    Ok(())
}

/// One router for both protocols: gRPC requests (content type `application/grpc*`) go to the
/// tonic services, everything else to the REST router.
fn by_content_type(rest: axum::Router, grpc: axum::Router) -> axum::Router {
    use tower::ServiceExt;
    let dispatch = tower::service_fn(move |request: axum::extract::Request| {
        let is_grpc = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let target = if is_grpc { grpc.clone() } else { rest.clone() };
        target.oneshot(request)
    });
    axum::Router::new().fallback_service(dispatch)
}

/// With `--repository-poll-seconds`, reloads what changed in the repository periodically.
fn spawn_poller(classifier: Arc<Classifier>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if every.is_zero() {
            return;
        }
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            classifier.registry().poll().await;
        }
    })
}
