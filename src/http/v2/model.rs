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

/// `GET /v2/models/{m}[/versions/{v}]/ready`: 200 when ready, 503 (with the reason) when
/// not, 404 when unknown.
pub async fn ready(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<StatusCode, ApiError> {
    state
        .classifier
        .resolve(Some(&path.model), path.version.as_deref())?;
    Ok(StatusCode::OK)
}

/// `GET /v2/models/{m}[/versions/{v}]`: name, versions, platform, inputs and outputs.
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

/// `GET /v2/models/{m}[/versions/{v}]/config`: Triton's model configuration as JSON.
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
    Ok(Json(json!({
        "name": model.name,
        "platform": PLATFORM,
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
pub async fn all_statistics(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    statistics_json(&state, None, None)
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics for one model.
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
