//! Health and model listing: `GET /health/live`, `GET /health/ready`, `GET /models`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "Live")))]
pub async fn live() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "live"}))).into_response()
}

/// Readiness: 200 when ready to serve (see `--strict-readiness`), 503 otherwise or while
/// draining.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready or draining"),
))]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.classifier.is_ready() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response()
    } else {
        let reason = if state.classifier.is_draining() {
            "draining"
        } else {
            "models not ready"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    }
}

/// `GET /models` response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ModelsResponse {
    /// The default model's name.
    pub default: String,
    /// Every model.
    pub models: Vec<ModelInfo>,
}

/// One model in `GET /models`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// Name.
    pub name: String,
    /// Versions and their states.
    pub versions: Vec<VersionInfo>,
    /// Input tensor, when a version is loaded.
    pub input: Option<InputInfo>,
    /// Number of labels (classes).
    pub labels: usize,
    /// Largest batch.
    pub max_batch_size: usize,
}

/// A version's state.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// Version number.
    pub version: String,
    /// READY, LOADING or UNAVAILABLE.
    pub state: String,
    /// Why it is not ready, if it is not.
    pub reason: String,
}

/// The input tensor.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct InputInfo {
    /// ONNX input name.
    pub name: String,
    /// `[-1, C, H, W]`.
    pub shape: Vec<i64>,
    /// `rgb` or `gray`.
    pub color: String,
}

/// Lists the models with their versions' states.
#[utoipa::path(get, path = "/models", tag = "models", responses(
    (status = 200, description = "The models", body = ModelsResponse),
    (status = 401, description = "Missing or wrong API key", body = super::error::ErrorBody),
), security((), ("bearer" = [])))]
pub async fn models(State(state): State<AppState>) -> Json<ModelsResponse> {
    let classifier = &state.classifier;
    let models = classifier
        .list_models()
        .into_iter()
        .map(|model| ModelInfo {
            name: model.name,
            versions: model
                .versions
                .into_iter()
                .map(|(version, state, reason)| VersionInfo {
                    version,
                    state: state.to_string(),
                    reason,
                })
                .collect(),
            input: model.input.map(|(name, shape, color)| InputInfo {
                name,
                shape,
                color: color.to_string(),
            }),
            labels: model.labels,
            max_batch_size: model.max_batch_size,
        })
        .collect();
    Json(ModelsResponse {
        default: classifier.registry().default_model().to_string(),
        models,
    })
}
