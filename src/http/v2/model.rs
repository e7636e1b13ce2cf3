//! V2 REST model endpoints: readiness, metadata, Triton's JSON model configuration and
//! statistics, and the repository index.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::V2Error;
use crate::kserve::PLATFORM;
use crate::kserve::model::{self as v2, StatisticDuration};

/// `{model}` and optional `{version}` path parameters.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    /// Model name.
    pub model: String,
    /// Version, when the path has `/versions/{version}`.
    #[serde(default)]
    pub version: Option<String>,
}

/// Model readiness: 200 when ready, 503 (with the reason) when not, 404 when unknown.
#[utoipa::path(get, operation_id = "v2_model_ready", path = "/models/{model}/ready", tag = "kserve-v2", params(ModelName),
    responses((status = 200, description = "Ready"), (status = 404, description = "Unknown model", body = V2Error),
        (status = 503, description = "Not ready", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn ready(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<StatusCode, ApiError> {
    state
        .classifier
        .resolve(Some(&path.model), path.version.as_deref())?;
    Ok(StatusCode::OK)
}

/// Model metadata: name, versions, platform, inputs and outputs.
#[utoipa::path(get, operation_id = "v2_metadata", path = "/models/{model}", tag = "kserve-v2", params(ModelName),
    responses((status = 200, description = "Model metadata", body = Object),
        (status = 404, description = "Unknown model", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn metadata(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    let metadata = v2::metadata(&state.classifier, &path.model, path.version.as_deref())?;
    let tensors = |tensors: &[v2::TensorMetadata]| {
        tensors
            .iter()
            .map(|tensor| json!({"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}))
            .collect::<Vec<_>>()
    };
    Ok(Json(json!({
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": tensors(&metadata.inputs),
        "outputs": tensors(&metadata.outputs),
    })))
}

/// Triton's model configuration as JSON (read by tritonclient and Triton's perf tools).
#[utoipa::path(get, operation_id = "v2_config", path = "/models/{model}/config", tag = "kserve-v2", params(ModelName),
    responses((status = 200, description = "Model configuration", body = Object),
        (status = 404, description = "Unknown model", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn config(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    let model = v2::config(&state.classifier, &path.model, path.version.as_deref())?;
    let spec = &model.spec;
    let batching = &spec.batching;
    let instance_group = match v2::gpus(&model) {
        Some(gpus) => {
            json!({"name": model.name, "kind": "KIND_GPU", "count": spec.instances, "gpus": gpus})
        }
        None => json!({"name": model.name, "kind": "KIND_CPU", "count": spec.instances}),
    };
    let parameters: serde_json::Map<String, Value> = v2::parameters(&model)
        .into_iter()
        .map(|(name, value)| (name.to_string(), json!({"string_value": value})))
        .collect();
    Ok(Json(json!({
        "name": model.name,
        "platform": PLATFORM,
        "parameters": parameters,
        "backend": "onnxruntime",
        "max_batch_size": batching.max_batch_size,
        "input": [{
            "name": spec.input_name,
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NCHW",
            "dims": spec.dims,
        }],
        "output": [{
            "name": spec.output_name,
            "data_type": "TYPE_FP32",
            "dims": [spec.classes],
        }],
        "dynamic_batching": {
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": batching.max_queue_delay.as_micros() as u64,
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": batching.default_timeout.as_micros() as u64,
                "allow_timeout_override": true,
                "max_queue_size": batching.max_queue_size,
            },
        },
        "instance_group": [instance_group],
    })))
}

/// `GET /v2/models/stats`: Triton's statistics for every ready model version.
#[utoipa::path(get, operation_id = "v2_all_statistics", path = "/models/stats", tag = "kserve-v2",
    responses((status = 200, description = "Statistics of every model", body = Object)),
    security((), ("bearer" = [])))]
pub async fn all_statistics(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    statistics_json(&state, None, None)
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics for one model.
#[utoipa::path(get, operation_id = "v2_statistics", path = "/models/{model}/stats", tag = "kserve-v2", params(ModelName),
    responses((status = 200, description = "Statistics", body = Object),
        (status = 404, description = "Unknown model", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn statistics(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    statistics_json(&state, Some(&path.model), path.version.as_deref())
}

fn statistics_json(
    state: &AppState,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    let stats = v2::statistics(&state.classifier, &state.metrics, name, version)?;
    let duration =
        |duration: StatisticDuration| json!({"count": duration.count, "ns": duration.ns});
    let zero = duration(StatisticDuration::default());
    let model_stats: Vec<Value> = stats
        .into_iter()
        .map(|stats| {
            json!({
                "name": stats.name,
                "version": stats.version,
                "last_inference": 0,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": {
                    "success": duration(stats.success),
                    "fail": duration(stats.fail),
                    "queue": duration(stats.queue),
                    "compute_input": zero,
                    "compute_infer": duration(stats.compute_infer),
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [],
            })
        })
        .collect();
    Ok(Json(json!({ "model_stats": model_stats })))
}

/// Body of `POST /v2/repository/index`; may be empty.
#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// `POST /v2/repository/index`: every model version with its state.
#[utoipa::path(post, operation_id = "v2_index", path = "/repository/index", tag = "kserve-v2",
    request_body(content = Object, description = "Optional `{\"ready\": true}`"),
    responses((status = 200, description = "Every model version and its state", body = Object)),
    security((), ("bearer" = [])))]
pub async fn index(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::bad_request(
                "bad_json",
                format!("invalid repository index request: {error}"),
            )
        })?
    };
    let entries: Vec<Value> = v2::index(&state.classifier, request.ready)
        .into_iter()
        .map(|entry| {
            let mut value =
                json!({"name": entry.name, "version": entry.version, "state": entry.state});
            if !entry.reason.is_empty() {
                value["reason"] = Value::String(entry.reason);
            }
            value
        })
        .collect();
    Ok(Json(Value::Array(entries)))
}

/// The model name in a V2 path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ModelName {
    /// Model name.
    #[allow(dead_code, reason = "documents the path parameter")]
    model: String,
}

/// The model name and version in a V2 path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ModelVersionName {
    /// Model name.
    #[allow(dead_code, reason = "documents the path parameter")]
    model: String,
    /// Version number.
    #[allow(dead_code, reason = "documents the path parameter")]
    version: String,
}

/// Metadata of one version.
#[utoipa::path(get, operation_id = "v2_metadata_version", path = "/models/{model}/versions/{version}", tag = "kserve-v2", params(ModelVersionName),
    responses((status = 200, description = "Model metadata", body = Object),
        (status = 404, description = "Unknown model or version", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn metadata_version(
    state: State<AppState>,
    path: Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    metadata(state, path).await
}

/// Readiness of one version.
#[utoipa::path(get, operation_id = "v2_model_ready_version", path = "/models/{model}/versions/{version}/ready", tag = "kserve-v2", params(ModelVersionName),
    responses((status = 200, description = "Ready"), (status = 404, description = "Unknown model or version", body = V2Error),
        (status = 503, description = "Not ready", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn ready_version(
    state: State<AppState>,
    path: Path<ModelPath>,
) -> Result<StatusCode, ApiError> {
    ready(state, path).await
}

/// Configuration of one version.
#[utoipa::path(get, operation_id = "v2_config_version", path = "/models/{model}/versions/{version}/config", tag = "kserve-v2", params(ModelVersionName),
    responses((status = 200, description = "Model configuration", body = Object),
        (status = 404, description = "Unknown model or version", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn config_version(
    state: State<AppState>,
    path: Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    config(state, path).await
}

/// Statistics of one version.
#[utoipa::path(get, operation_id = "v2_statistics_version", path = "/models/{model}/versions/{version}/stats", tag = "kserve-v2", params(ModelVersionName),
    responses((status = 200, description = "Statistics", body = Object),
        (status = 404, description = "Unknown model or version", body = V2Error)),
    security((), ("bearer" = [])))]
pub async fn statistics_version(
    state: State<AppState>,
    path: Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    statistics(state, path).await
}
