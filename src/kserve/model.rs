//! What the V2 protocol reports about models: readiness, metadata, the repository index and
//! statistics (read back from the Prometheus metrics, so every protocol's requests count).

use std::sync::Arc;

use super::{FP32, PLATFORM};
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::service::{Classifier, LoadedModel, VersionState};

/// Name, datatype and shape (`-1` for the batch) of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// V2 datatype.
    pub datatype: &'static str,
    /// Shape, `-1` for the batch dimension.
    pub shape: Vec<i64>,
}

/// A model's V2 metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Ready versions, ascending.
    pub versions: Vec<String>,
    /// Always [`PLATFORM`].
    pub platform: &'static str,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// Whether a model (version) is ready; unknown models and versions are errors.
pub fn ready(
    classifier: &Classifier,
    name: &str,
    version: Option<&str>,
) -> Result<bool, ServiceError> {
    match classifier.resolve(Some(name), version) {
        Ok(_) => Ok(true),
        Err(ServiceError::ModelNotReady { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

/// The metadata of a ready model version.
pub fn metadata(
    classifier: &Classifier,
    name: &str,
    version: Option<&str>,
) -> Result<ModelMetadata, ServiceError> {
    let model = classifier.resolve(Some(name), version)?;
    let spec = &model.spec;
    let versions = classifier
        .registry()
        .snapshot()
        .get(&model.name)
        .map(|versions| {
            versions
                .iter()
                .filter(|(_, entry)| entry.state == VersionState::Ready)
                .map(|(version, _)| version.to_string())
                .collect()
        })
        .unwrap_or_default();
    let [c, h, w] = spec.dims.map(|dim| dim as i64);
    Ok(ModelMetadata {
        name: model.name.clone(),
        versions,
        platform: PLATFORM,
        inputs: vec![TensorMetadata {
            name: spec.input_name.clone(),
            datatype: FP32,
            shape: vec![-1, c, h, w],
        }],
        outputs: vec![TensorMetadata {
            name: spec.output_name.clone(),
            datatype: FP32,
            shape: vec![-1, spec.classes as i64],
        }],
    })
}

/// A ready model version, for its configuration.
pub fn config(
    classifier: &Classifier,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedModel>, ServiceError> {
    classifier.resolve(Some(name), version)
}

/// Triton's free-form model config parameters: what `--target-p99-ms` measured and chose
/// (`target_p99_ms`, and `batch_latency_ms` as space-separated `size:ms` pairs); empty
/// without a target.
pub fn parameters(model: &LoadedModel) -> Vec<(&'static str, String)> {
    let batching = &model.spec.batching;
    let Some(target) = batching.target_p99 else {
        return Vec::new();
    };
    let measured: Vec<String> = batching
        .measured_latency
        .iter()
        .map(|(size, time)| format!("{size}:{:.3}", time.as_secs_f64() * 1000.0))
        .collect();
    vec![
        ("target_p99_ms", target.as_millis().to_string()),
        ("batch_latency_ms", measured.join(" ")),
    ]
}

/// Whether the model runs on a GPU (Triton's `KIND_GPU`) and its device ids.
pub fn gpus(model: &LoadedModel) -> Option<Vec<i32>> {
    let device = model.spec.device.as_str();
    let rest = device.strip_prefix("cuda")?;
    Some(vec![
        rest.strip_prefix(':')
            .and_then(|id| id.parse().ok())
            .unwrap_or(0),
    ])
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why a version is unavailable; empty otherwise.
    pub reason: String,
}

/// Every model version in the repository (only ready ones when `ready_only`).
pub fn index(classifier: &Classifier, ready_only: bool) -> Vec<IndexEntry> {
    classifier
        .registry()
        .snapshot()
        .into_iter()
        .flat_map(|(name, versions)| {
            versions
                .into_iter()
                .map(move |(version, entry)| IndexEntry {
                    name: name.clone(),
                    version: version.to_string(),
                    state: entry.state.name(),
                    reason: match entry.state {
                        VersionState::Unavailable(reason) => reason,
                        VersionState::Loading | VersionState::Ready => String::new(),
                    },
                })
        })
        .filter(|entry| !ready_only || entry.state == VersionState::Ready.name())
        .collect()
}

/// A count and a total time, as Triton's `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatisticDuration {
    /// Occurrences.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

/// Triton's per-version statistics, from our metrics. The metrics are per model, so every
/// version of a model reports the model's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Images inferred (warm-up and golden checks included).
    pub inference_count: u64,
    /// Batches run.
    pub execution_count: u64,
    /// Successful requests (any protocol) and the model's total request time.
    pub success: StatisticDuration,
    /// Failed requests (any protocol).
    pub fail: StatisticDuration,
    /// Jobs queued and their total queue time.
    pub queue: StatisticDuration,
    /// Batches and their total inference time.
    pub compute_infer: StatisticDuration,
}

/// Statistics of every ready version of `name` (of every model when `None`), or of one version.
pub fn statistics(
    classifier: &Classifier,
    metrics: &Metrics,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<ModelStatistics>, ServiceError> {
    let targets: Vec<(String, String)> = match (name, version) {
        (Some(name), Some(_)) => {
            let model = classifier.resolve(Some(name), version)?;
            vec![(model.name.clone(), model.version.to_string())]
        }
        (Some(name), None) => {
            classifier.resolve(Some(name), None)?;
            ready_versions(classifier, Some(name))
        }
        (None, _) => ready_versions(classifier, None),
    };
    Ok(targets
        .into_iter()
        .map(|(name, version)| model_statistics(metrics, name, version))
        .collect())
}

fn ready_versions(classifier: &Classifier, only: Option<&str>) -> Vec<(String, String)> {
    index(classifier, true)
        .into_iter()
        .filter(|entry| only.is_none_or(|name| name == entry.name))
        .map(|entry| (entry.name, entry.version))
        .collect()
}

fn model_statistics(metrics: &Metrics, name: String, version: String) -> ModelStatistics {
    let seconds_to_ns = |seconds: f64| (seconds * 1e9) as u64;
    let histogram = |vec: &prometheus::HistogramVec| {
        vec.get_metric_with_label_values(&[name.as_str()])
            .map(|histogram| StatisticDuration {
                count: histogram.get_sample_count(),
                ns: seconds_to_ns(histogram.get_sample_sum()),
            })
            .unwrap_or_default()
    };
    let (mut success, mut fail) = (0u64, 0u64);
    let mut request_ns = 0u64;
    for family in prometheus::core::Collector::collect(&metrics.requests) {
        for metric in family.get_metric() {
            let label = |key: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|pair| pair.name() == key)
                    .map(|pair| pair.value().to_string())
                    .unwrap_or_default()
            };
            if label("model") != name {
                continue;
            }
            let count = metric.get_counter().get_value() as u64;
            match label("code").as_str() {
                "200" | "OK" => success += count,
                _ => fail += count,
            }
        }
    }
    for family in prometheus::core::Collector::collect(&metrics.request_seconds) {
        for metric in family.get_metric() {
            let is_model = metric
                .get_label()
                .iter()
                .any(|pair| pair.name() == "model" && pair.value() == name);
            if is_model {
                request_ns += seconds_to_ns(metric.get_histogram().get_sample_sum());
            }
        }
    }
    let batches = metrics
        .batch_size
        .get_metric_with_label_values(&[name.as_str()])
        .ok();
    let inference_count = batches
        .as_ref()
        .map_or(0, |batches| batches.get_sample_sum() as u64);
    let execution_count = batches.map_or(0, |batches| batches.get_sample_count());
    ModelStatistics {
        inference_count,
        execution_count,
        success: StatisticDuration {
            count: success,
            ns: request_ns,
        },
        fail: StatisticDuration { count: fail, ns: 0 },
        queue: histogram(&metrics.queue_seconds),
        compute_infer: histogram(&metrics.inference_seconds),
        name,
        version,
    }
}
