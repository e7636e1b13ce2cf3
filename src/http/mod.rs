//! The REST transport: router, shared state and middleware. Handlers parse and validate, call
//! the service, and map errors once (`error.rs`).

pub mod body;
pub mod classify;
pub mod error;
pub mod health;
pub mod v2;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::service::Classifier;
use error::ApiError;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The service facade.
    pub classifier: Arc<Classifier>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `--max-body-bytes` and `--body-read-timeout-ms`.
    pub body_limits: body::BodyLimits,
    /// Permits for requests in flight (`--max-concurrent-requests`).
    pub in_flight: Arc<Semaphore>,
    /// The permit count, for messages.
    pub max_concurrent_requests: usize,
    /// `--api-key`, when set.
    pub api_key: Option<Arc<str>>,
    /// Web page and CORS settings.
    pub web: WebOptions,
    /// The OpenAPI document, filled in by [`router`].
    pub openapi: Arc<str>,
}

/// The built-in page and cross-origin access.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// Serve the page at `/` (`--no-web-ui` turns it off).
    pub web_ui: bool,
    /// Origins allowed to call the API from browsers (`--cors-allow-origin`); none = no CORS.
    pub cors_allow_origin: Vec<String>,
}

/// The request id (from `x-request-id` or generated), stored as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The OpenAPI description's fixed parts; paths are added as routes are registered.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "resnet-serve", description = "Image classification with ResNet models on ONNX Runtime."),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

/// Declares the `bearer` security scheme used with `--api-key`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The REST router. Routes and their OpenAPI description are registered together
/// (utoipa-axum), so `/openapi.json` lists exactly what is served.
pub fn router(state: AppState) -> Router {
    use utoipa_axum::{router::OpenApiRouter, routes};
    let guarded = OpenApiRouter::new()
        .routes(routes!(classify::classify))
        .routes(routes!(health::models))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_in_flight,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let mut open = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(web::openapi_json));
    if state.web.web_ui {
        open = open.routes(routes!(web::index));
    }
    let (router, spec) = open.merge(guarded).split_for_parts();
    let (v2_router, v2_spec) = v2::router(state.clone()).split_for_parts();
    let spec = spec
        .nest("/v2", v2_spec)
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"));
    let router = router
        .nest("/v2", v2::finish(v2_router))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            close_when_draining,
        ))
        .with_state(AppState {
            openapi: Arc::from(spec),
            ..state.clone()
        });
    match web::cors(&state.web.cors_allow_origin) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    ApiError::MethodNotAllowed(method.to_string()).into_response()
}

/// Takes or makes the request id, records it on the request's span and echoes it back.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// While draining, answers HTTP/1 requests with `Connection: close`, so clients stop reusing
/// their connections before the server closes the idle ones (which would race a request
/// being sent on one). HTTP/2 gets GOAWAY from the graceful shutdown instead.
async fn close_when_draining(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = next.run(request).await;
    if http1 && state.classifier.is_draining() {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

/// With `--api-key`, requires `Authorization: Bearer <key>` (compared in constant time).
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !crate::config::api_key_matches(given, key) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Refuses a request at once when `--max-concurrent-requests` are in flight: 429, or 503
/// while draining.
async fn limit_in_flight(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        if state.classifier.is_draining() {
            return ApiError::Service(crate::error::ServiceError::ShuttingDown).into_response();
        }
        return ApiError::Overloaded {
            limit: state.max_concurrent_requests,
        }
        .into_response();
    };
    let _gauge = InFlightGauge::new(state.metrics.clone());
    next.run(request).await
}

/// Counts a request in `resnet_serve_in_flight_requests` until dropped, even if the client
/// goes away mid-request.
struct InFlightGauge(Arc<Metrics>);

impl InFlightGauge {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}
