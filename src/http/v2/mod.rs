//! KServe V2 / Open Inference Protocol over REST, under `/v2`: health, metadata, inference
//! (JSON and binary tensors), Triton's model configuration and statistics, and the repository
//! index. Errors use the V2 body `{"error": "<message>"}`, whatever produced them.

pub mod infer;
pub mod model;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use super::AppState;
use crate::error::ServiceError;
use crate::kserve::{EXTENSIONS, SERVER_NAME};

/// Error bodies longer than this are not rewritten into the V2 form (ours are far shorter).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The `/v2` router, to be nested at `/v2`.
pub fn router(state: AppState) -> Router<AppState> {
    let infer_routes = Router::new()
        .route("/models/{model}/infer", post(infer::infer))
        .route(
            "/models/{model}/versions/{version}/infer",
            post(infer::infer),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::limit_in_flight,
        ));
    let protected = Router::new()
        .route("/", get(server_metadata))
        .route("/models/stats", get(model::all_statistics))
        .route("/models/{model}", get(model::metadata))
        .route("/models/{model}/versions/{version}", get(model::metadata))
        .route("/models/{model}/ready", get(model::ready))
        .route(
            "/models/{model}/versions/{version}/ready",
            get(model::ready),
        )
        .route("/models/{model}/config", get(model::config))
        .route(
            "/models/{model}/versions/{version}/config",
            get(model::config),
        )
        .route("/models/{model}/stats", get(model::statistics))
        .route(
            "/models/{model}/versions/{version}/stats",
            get(model::statistics),
        )
        .route("/repository/index", post(model::index))
        .route("/repository/models/{model}/load", post(model_control))
        .route("/repository/models/{model}/unload", post(model_control))
        .merge(infer_routes)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::require_api_key,
        ));
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .merge(protected)
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(RequestDecompressionLayer::new())
        .layer(middleware::map_response(v2_error_body))
        .layer(CompressionLayer::new())
}

/// `GET /v2`: server name, version and the extensions implemented.
async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

/// `GET /v2/health/live`: 200 while the process serves.
async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: 200 when ready (see `--strict-readiness`), 503 otherwise.
async fn ready(State(state): State<AppState>) -> Response {
    if state.classifier.is_ready() {
        StatusCode::OK.into_response()
    } else if state.classifier.is_draining() {
        super::error::ApiError::Service(ServiceError::ShuttingDown).into_response()
    } else {
        let body = json!({ "error": "the server is not ready: not every model is loaded" });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// `POST /v2/repository/models/{m}/load|unload`: 501 until the server offers model control
/// (gRPC answers UNIMPLEMENTED alike).
async fn model_control() -> Response {
    let body = json!({
        "error": "model control (load/unload) is not available; models are loaded from the repository at start-up"
    });
    (StatusCode::NOT_IMPLEMENTED, axum::Json(body)).into_response()
}

/// Rewrites every error response under `/v2` (ours, extractor rejections, 404/405, body
/// limits, unsupported `Content-Encoding`) into the V2 body `{"error": "<message>"}`.
async fn v2_error_body(response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => match object.get("error") {
            Some(Value::String(message)) => message.clone(),
            Some(Value::Object(error)) => error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::from_utf8_lossy(&bytes).into_owned(),
        },
        _ => String::from_utf8_lossy(&bytes).trim().to_string(),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = json!({ "error": message }).to_string();
    Response::from_parts(parts, Body::from(body))
}
