//! KServe V2 / Open Inference Protocol over REST, under `/v2`: health, metadata, inference
//! (JSON and binary tensors), Triton's model configuration and statistics, and the repository
//! index. Errors use the V2 body `{"error": "<message>"}`, whatever produced them.

pub mod infer;
pub mod model;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use crate::error::ServiceError;
use crate::kserve::{EXTENSIONS, SERVER_NAME};

/// The V2 error body (`tritonclient` reads a string).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct V2Error {
    /// What went wrong.
    pub error: String,
}

/// Error bodies longer than this are not rewritten into the V2 form (ours are far shorter).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The `/v2` routes with their OpenAPI paths (relative to `/v2`); [`finish`] adds the
/// fallbacks and the V2 error, compression and decompression layers once split.
pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    let infer_routes = OpenApiRouter::new()
        .routes(routes!(infer::infer))
        .routes(routes!(infer::infer_version))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::limit_in_flight,
        ));
    let protected = OpenApiRouter::new()
        .routes(routes!(server_metadata))
        .routes(routes!(model::all_statistics))
        .routes(routes!(model::metadata))
        .routes(routes!(model::metadata_version))
        .routes(routes!(model::ready))
        .routes(routes!(model::ready_version))
        .routes(routes!(model::config))
        .routes(routes!(model::config_version))
        .routes(routes!(model::statistics))
        .routes(routes!(model::statistics_version))
        .routes(routes!(model::index))
        .routes(routes!(model_load))
        .routes(routes!(model_unload))
        .merge(infer_routes)
        .route_layer(middleware::from_fn_with_state(
            state,
            super::require_api_key,
        ));
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .merge(protected)
}

/// Adds what every `/v2` response shares: V2 error bodies (also for 404/405), request
/// decompression and response compression.
pub fn finish(router: Router<AppState>) -> Router<AppState> {
    router
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(RequestDecompressionLayer::new())
        .layer(middleware::map_response(v2_error_body))
        .layer(CompressionLayer::new())
}

/// Server metadata: name, version and the extensions implemented.
#[utoipa::path(get, operation_id = "v2_server_metadata", path = "", tag = "kserve-v2", responses(
    (status = 200, description = "Server metadata", body = Object),
), security((), ("bearer" = [])))]
async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, operation_id = "v2_live", path = "/health/live", tag = "kserve-v2", responses((status = 200, description = "Live")))]
async fn live() -> StatusCode {
    StatusCode::OK
}

/// Readiness: 200 when ready (see `--strict-readiness`), 503 otherwise.
#[utoipa::path(get, operation_id = "v2_ready", path = "/health/ready", tag = "kserve-v2", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready or draining", body = V2Error),
))]
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

/// Loads (or reloads) a model from the repository; with `--enable-model-control` only. New
/// versions are warmed up and checked before they replace the ones serving.
#[utoipa::path(post, operation_id = "v2_model_load", path = "/repository/models/{model}/load", tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Loaded and serving"),
        (status = 400, description = "The model failed to load (versions serving before stay)", body = V2Error),
        (status = 404, description = "No such model directory", body = V2Error),
        (status = 501, description = "Model control is off", body = V2Error),
    ),
    security((), ("bearer" = [])))]
async fn model_load(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    let registry = state.classifier.registry();
    if !registry.model_control() {
        return model_control_disabled();
    }
    match registry.load_model(&model).await {
        Ok(()) => axum::Json(json!({})).into_response(),
        Err(error) => super::error::ApiError::Service(error).into_response(),
    }
}

/// Unloads every version of a model; with `--enable-model-control` only. Requests in flight
/// finish first.
#[utoipa::path(post, operation_id = "v2_model_unload", path = "/repository/models/{model}/unload", tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Unloaded"),
        (status = 404, description = "Unknown model", body = V2Error),
        (status = 501, description = "Model control is off", body = V2Error),
    ),
    security((), ("bearer" = [])))]
async fn model_unload(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    let registry = state.classifier.registry();
    if !registry.model_control() {
        return model_control_disabled();
    }
    match registry.unload_model(&model).await {
        Ok(()) => axum::Json(json!({})).into_response(),
        Err(error) => super::error::ApiError::Service(error).into_response(),
    }
}

fn model_control_disabled() -> Response {
    let body = json!({
        "error": "model control is off; start the server with --enable-model-control to load and unload models"
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
