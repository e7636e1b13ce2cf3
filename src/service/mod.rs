//! The `Classifier` facade every transport calls: model lookup, bounded preprocessing, batched
//! inference, softmax and top-k with labels. Knows nothing of HTTP or gRPC.

pub mod memory;
pub mod pipeline;
pub mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pipeline::Scheduling;
pub use pipeline::{ImageInput, PreprocessPool};
pub use registry::{LoadedModel, Registry, VersionState};

use crate::error::ServiceError;
use crate::values::Fp32Values;

/// Default number of predictions per image.
pub const DEFAULT_TOP_K: usize = 5;

/// A classification request, transport-independent.
#[derive(Debug, Clone, Default)]
pub struct ClassifyRequest {
    /// Model name; the default model when `None`.
    pub model: Option<String>,
    /// Version; the newest ready version when `None`.
    pub version: Option<String>,
    /// Predictions per image; 5 (or the class count, if smaller) when `None`.
    pub top_k: Option<i64>,
    /// The images, in order.
    pub images: Vec<ImageInput>,
    /// Triton's convention: 0 or `None` = the model's default, 1 = highest.
    pub priority: Option<u64>,
    /// Requested timeout, capped by the model's `default_timeout_ms`.
    pub timeout: Option<Duration>,
    /// Whether errors name the image's position (multi-image request forms).
    pub numbered: bool,
    /// When the request arrived (its head, before the body was read); now when `None`.
    pub arrived: Option<Instant>,
}

/// One predicted class.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class name (the index as text when the model has no labels).
    pub label: String,
    /// 0-based class index.
    pub index: usize,
    /// Softmax probability.
    pub score: f32,
}

/// Time spent in each stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Decode and preprocess.
    pub decode: Duration,
    /// Waiting in the batch queue.
    pub queue: Duration,
    /// Inference of the batch.
    pub infer: Duration,
    /// From the request's arrival (its head, before the body was read) to its answer.
    pub total: Duration,
}

impl Timing {
    /// The stages as a `Server-Timing` header value (milliseconds), as REST and gRPC send it.
    pub fn server_timing(&self) -> String {
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        format!(
            "decode;dur={:.3}, queue;dur={:.3}, infer;dur={:.3}, total;dur={:.3}",
            ms(self.decode),
            ms(self.queue),
            ms(self.infer),
            ms(self.total)
        )
    }
}

/// The answer to a [`ClassifyRequest`].
#[derive(Debug, Clone)]
pub struct Classification {
    /// Model that answered.
    pub model: String,
    /// Its version.
    pub version: String,
    /// Top-k predictions per image, in request order.
    pub results: Vec<Vec<Prediction>>,
    /// Stage timings.
    pub timing: Timing,
}

/// The facade: classify images with any served model.
pub struct Classifier {
    registry: Arc<Registry>,
    metrics: Arc<crate::metrics::Metrics>,
    pool: PreprocessPool,
    strict_readiness: bool,
    draining: AtomicBool,
}

impl Classifier {
    /// A classifier over a loaded registry.
    pub fn new(
        registry: Arc<Registry>,
        pool: PreprocessPool,
        metrics: Arc<crate::metrics::Metrics>,
        strict_readiness: bool,
    ) -> Self {
        Self {
            registry,
            metrics,
            pool,
            strict_readiness,
            draining: AtomicBool::new(false),
        }
    }

    /// Ready to serve: not draining, and every model (strict) or one model loaded.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.registry.is_ready(self.strict_readiness)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Turns not-ready for good (shutdown has begun); requests are still served.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The model registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Finds the model a request would use (for metric labels and validation).
    pub fn resolve(
        &self,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, ServiceError> {
        self.registry.resolve(model, version)
    }

    /// Classifies every image of `request`.
    #[tracing::instrument(skip_all, fields(model = request.model.as_deref().unwrap_or("default"), images = request.images.len()))]
    pub async fn classify(&self, request: ClassifyRequest) -> Result<Classification, ServiceError> {
        let label = self.resolve(request.model.as_deref(), None).map_or_else(
            |_| crate::metrics::UNKNOWN_MODEL.to_string(),
            |model| model.name.clone(),
        );
        let result = self.classify_unmetered(request).await;
        if let Err(error) = &result {
            self.count_invalid(&label, error);
        }
        result
    }

    /// Counts a refusal caused by the request's own content as `reason="invalid"`.
    fn count_invalid(&self, model: &str, error: &ServiceError) {
        let invalid = match error {
            ServiceError::NoImages
            | ServiceError::InvalidTopK { .. }
            | ServiceError::InvalidPriority { .. }
            | ServiceError::InvalidTensor(_) => true,
            ServiceError::Image { source, .. } => {
                !matches!(source, crate::preprocess::PreprocessError::Internal(_))
            }
            ServiceError::ModelNotFound { .. }
            | ServiceError::VersionNotFound { .. }
            | ServiceError::ModelNotReady { .. }
            | ServiceError::QueueFull { .. }
            | ServiceError::WouldMissDeadline { .. }
            | ServiceError::DeadlineExceeded { .. }
            | ServiceError::ShuttingDown
            | ServiceError::LoadFailed { .. }
            | ServiceError::Internal(_) => false,
        };
        if invalid {
            self.metrics
                .rejected
                .with_label_values(&[model, "invalid"])
                .inc();
        }
    }

    async fn classify_unmetered(
        &self,
        request: ClassifyRequest,
    ) -> Result<Classification, ServiceError> {
        let model = self.resolve(request.model.as_deref(), request.version.as_deref())?;
        let classes = model.spec.classes;
        let top_k = match request.top_k {
            None => DEFAULT_TOP_K.min(classes),
            Some(value) if value >= 1 && value as u64 <= classes as u64 => value as usize,
            Some(value) => return Err(ServiceError::InvalidTopK { value, classes }),
        };
        let options = InferOptions {
            priority: request.priority,
            timeout: request.timeout,
            arrived: request.arrived,
        };
        let output = self
            .infer_images(&model, request.images, options, request.numbered)
            .await?;
        let results = output
            .logits
            .chunks_exact(classes)
            .map(|logits| top_predictions(logits, top_k, &model.spec.labels))
            .collect();
        Ok(Classification {
            model: output.model,
            version: output.version,
            results,
            timing: output.timing,
        })
    }

    /// Decodes, preprocesses and runs encoded or raw images; returns the raw logits.
    pub async fn infer_images(
        &self,
        model: &Arc<LoadedModel>,
        images: Vec<ImageInput>,
        options: InferOptions,
        numbered: bool,
    ) -> Result<InferOutput, ServiceError> {
        let started = Instant::now();
        let level = priority_level(options.priority, model)?;
        if images.is_empty() {
            return Err(ServiceError::NoImages);
        }
        let arrived = options.arrived.unwrap_or(started);
        let (deadline, timeout_ms) = deadline(arrived, options.timeout, model);
        let scheduling = Scheduling {
            level,
            arrived,
            deadline,
        };
        model.check_admission(images.len(), scheduling, timeout_ms)?;
        let input = self
            .pool
            .run(images, &model.preprocess, deadline, numbered, timeout_ms)
            .await?;
        let decode = started.elapsed();
        let inferred = model.infer(input.into(), scheduling, timeout_ms).await?;
        Ok(InferOutput {
            model: model.name.clone(),
            version: model.version.to_string(),
            logits: inferred.logits,
            timing: Timing {
                decode,
                queue: inferred.queue,
                infer: inferred.infer,
                total: arrived.elapsed(),
            },
        })
    }

    /// Runs an already preprocessed `N × C × H × W` tensor (KServe V2 FP32 inputs). The batch
    /// may not exceed the model's `max_batch_size`, and every value must be finite.
    pub async fn infer_tensor(
        &self,
        model: &Arc<LoadedModel>,
        input: Fp32Values,
        batch: usize,
        options: InferOptions,
    ) -> Result<InferOutput, ServiceError> {
        let result = self
            .infer_tensor_unmetered(model, input, batch, options)
            .await;
        if let Err(error) = &result {
            self.count_invalid(&model.name, error);
        }
        result
    }

    async fn infer_tensor_unmetered(
        &self,
        model: &Arc<LoadedModel>,
        input: Fp32Values,
        batch: usize,
        options: InferOptions,
    ) -> Result<InferOutput, ServiceError> {
        let started = Instant::now();
        let level = priority_level(options.priority, model)?;
        let tensor_len = model.spec.preprocess.tensor_len();
        let max_batch_size = model.spec.batching.max_batch_size;
        if batch == 0 || batch > max_batch_size {
            return Err(ServiceError::InvalidTensor(format!(
                "batch size {batch} is outside 1..={max_batch_size} (the model's max_batch_size)"
            )));
        }
        if input.len() != batch * tensor_len {
            return Err(ServiceError::InvalidTensor(format!(
                "input has {} values, expected {batch} × {:?} = {}",
                input.len(),
                model.spec.dims,
                batch * tensor_len
            )));
        }
        if let Some(position) = first_non_finite(&input) {
            return Err(ServiceError::InvalidTensor(format!(
                "input value {position} is {}, not a finite number",
                input[position]
            )));
        }
        let arrived = options.arrived.unwrap_or(started);
        let (deadline, timeout_ms) = deadline(arrived, options.timeout, model);
        let inferred = model
            .infer(
                input,
                Scheduling {
                    level,
                    arrived,
                    deadline,
                },
                timeout_ms,
            )
            .await?;
        Ok(InferOutput {
            model: model.name.clone(),
            version: model.version.to_string(),
            logits: inferred.logits,
            timing: Timing {
                decode: std::time::Duration::ZERO,
                queue: inferred.queue,
                infer: inferred.infer,
                total: arrived.elapsed(),
            },
        })
    }
}

/// A model as listed by `GET /models` and `ListModels`.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    /// Name.
    pub name: String,
    /// (version, state name, reason) for each version.
    pub versions: Vec<(String, &'static str, String)>,
    /// Input name, `[-1, C, H, W]` and colour name, when a version is loaded.
    pub input: Option<(String, Vec<i64>, &'static str)>,
    /// Number of labels.
    pub labels: usize,
    /// Largest batch.
    pub max_batch_size: usize,
}

impl Classifier {
    /// Every model with its versions' states, sorted by name.
    pub fn list_models(&self) -> Vec<ModelSummary> {
        self.registry
            .snapshot()
            .into_iter()
            .map(|(name, versions)| {
                let loaded = versions
                    .values()
                    .rev()
                    .find_map(|entry| entry.loaded.clone());
                ModelSummary {
                    name,
                    versions: versions
                        .iter()
                        .map(|(version, entry)| {
                            let reason = match &entry.state {
                                VersionState::Unavailable(reason) => reason.clone(),
                                _ => String::new(),
                            };
                            (version.to_string(), entry.state.name(), reason)
                        })
                        .collect(),
                    input: loaded.as_ref().map(|model| {
                        let shape = std::iter::once(-1)
                            .chain(model.spec.dims.iter().map(|&d| d as i64))
                            .collect();
                        let color = match model.spec.preprocess.color {
                            crate::repository::config::Color::Rgb => "rgb",
                            crate::repository::config::Color::Gray => "gray",
                        };
                        (model.spec.input_name.clone(), shape, color)
                    }),
                    labels: loaded.as_ref().map_or(0, |model| model.spec.labels.len()),
                    max_batch_size: loaded
                        .as_ref()
                        .map_or(0, |model| model.spec.batching.max_batch_size),
                }
            })
            .collect()
    }
}

/// Scheduling options of an inference.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferOptions {
    /// Triton's convention: 0 or `None` = the model's default, 1 = highest.
    pub priority: Option<u64>,
    /// Requested timeout, capped by the model's `default_timeout_ms`.
    pub timeout: Option<Duration>,
    /// When the request arrived: its deadline and the latency target count from here (now
    /// when `None`).
    pub arrived: Option<Instant>,
}

/// Raw logits of an inference.
#[derive(Debug, Clone)]
pub struct InferOutput {
    /// Model that answered.
    pub model: String,
    /// Its version.
    pub version: String,
    /// `N × classes` logits, row-major.
    pub logits: Vec<f32>,
    /// Stage timings.
    pub timing: Timing,
}

/// Maps Triton's priority (0 = default, 1 = highest) to a 0-based level index.
pub fn priority_level(priority: Option<u64>, model: &LoadedModel) -> Result<usize, ServiceError> {
    let levels = model.spec.batching.priority_levels;
    match priority.unwrap_or(0) {
        0 => Ok(model.spec.batching.default_priority as usize - 1),
        value if value <= u64::from(levels) => Ok(value as usize - 1),
        value => Err(ServiceError::InvalidPriority { value, levels }),
    }
}

/// The request's deadline: its own timeout capped by the model's default, from `started`.
pub fn deadline(
    started: Instant,
    requested: Option<Duration>,
    model: &LoadedModel,
) -> (Instant, u64) {
    let cap = model.spec.batching.default_timeout;
    let timeout = requested.map_or(cap, |requested| requested.min(cap));
    (started + timeout, timeout.as_millis() as u64)
}

/// Softmax over `logits`, then the `k` most probable classes, ties by lower index.
pub fn top_predictions(logits: &[f32], k: usize, labels: &[String]) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exponentials: Vec<f64> = logits
        .iter()
        .map(|&logit| f64::from(logit - max).exp())
        .collect();
    let sum: f64 = exponentials.iter().sum();
    let mut ranked: Vec<(usize, f64)> = exponentials
        .into_iter()
        .map(|value| value / sum)
        .enumerate()
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(k)
        .map(|(index, score)| Prediction {
            label: labels
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            index,
            score: score as f32,
        })
        .collect()
}

/// The index of the first NaN or infinity. A branch-free pass first, so that the usual
/// all-finite tensor of hundreds of thousands of values is checked in vector registers.
fn first_non_finite(values: &[f32]) -> Option<usize> {
    let all_finite = values
        .iter()
        .fold(true, |finite, value| finite & value.is_finite());
    if all_finite {
        None
    } else {
        values.iter().position(|value| !value.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_top_k_sorted_with_labels() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let predictions = top_predictions(&[1.0, 3.0, 2.0], 2, &labels);
        assert_eq!(
            predictions.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(predictions[0].label, "b");
        let total: f32 = top_predictions(&[1.0, 3.0, 2.0], 3, &labels)
            .iter()
            .map(|p| p.score)
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((predictions[0].score - 0.665_240_9).abs() < 1e-6);
    }

    #[test]
    fn huge_logits_do_not_overflow_and_ties_keep_index_order() {
        let predictions = top_predictions(&[1000.0, 1000.0, -1000.0], 3, &[]);
        assert_eq!(predictions[0].index, 0);
        assert_eq!(predictions[0].label, "0");
        assert!((predictions[0].score - 0.5).abs() < 1e-6);
        assert_eq!(predictions[2].score, 0.0);
    }
}
