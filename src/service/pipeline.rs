//! The path every image takes: preprocess on the bounded blocking pool, then one or more
//! batcher jobs, then logits back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, oneshot};

use crate::batcher::{BatchError, BatcherHandle, Job};
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::preprocess::{self, Channels, ImageLimits, PreprocessSpec};
use crate::values::Fp32Values;

/// One image as a client sent it.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// Encoded bytes of any supported format.
    Encoded(Bytes),
    /// Raw interleaved 8-bit pixels.
    Raw {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Pixel layout.
        channels: Channels,
        /// `width × height × channels` bytes.
        pixels: Bytes,
    },
}

/// Decode and preprocess, bounded: at most `permits` images are processed at once; others wait
/// for a slot until their deadline (their number is bounded by the in-flight request limit).
#[derive(Clone)]
pub struct PreprocessPool {
    permits: Arc<Semaphore>,
    limits: ImageLimits,
    metrics: Arc<Metrics>,
}

impl PreprocessPool {
    /// A pool running `threads` images at once.
    pub fn new(threads: usize, limits: ImageLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            limits,
            metrics,
        }
    }

    /// Preprocesses every image into one `images × tensor_len` buffer, in order.
    pub async fn run(
        &self,
        images: Vec<ImageInput>,
        spec: &Arc<PreprocessSpec>,
        deadline: Instant,
        number_images: bool,
        timeout_ms: u64,
    ) -> Result<Vec<f32>, ServiceError> {
        let slot = spec.tensor_len();
        let images_total = images.len();
        let mut tasks = Vec::with_capacity(images_total);
        for (index, image) in images.into_iter().enumerate() {
            let permit =
                tokio::time::timeout_at(deadline.into(), self.permits.clone().acquire_owned())
                    .await
                    .map_err(|_| ServiceError::DeadlineExceeded { timeout_ms })?
                    .map_err(|_| ServiceError::ShuttingDown)?;
            let spec = spec.clone();
            let limits = self.limits;
            let metrics = self.metrics.clone();
            let span = tracing::Span::current();
            tasks.push(tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let _entered = span.enter();
                let started = Instant::now();
                let mut out = vec![0.0f32; slot];
                let result = match &image {
                    ImageInput::Encoded(bytes) => {
                        preprocess::preprocess_encoded(bytes, &spec, &limits, &mut out)
                    }
                    ImageInput::Raw {
                        width,
                        height,
                        channels,
                        pixels,
                    } => preprocess::preprocess_raw(
                        *width, *height, *channels, pixels, &spec, &limits, &mut out,
                    ),
                };
                metrics
                    .decode_seconds
                    .observe(started.elapsed().as_secs_f64());
                result.map(|()| out).map_err(|source| ServiceError::Image {
                    index: number_images.then_some(index),
                    source,
                })
            }));
        }
        let mut input = Vec::new();
        for (index, task) in tasks.into_iter().enumerate() {
            let tensor = task.await.map_err(|error| {
                ServiceError::Internal(format!("preprocessing task failed: {error}"))
            })??;
            // The first image's buffer becomes the request's: a single image (most requests)
            // is not copied again.
            if index == 0 {
                input = tensor;
                input.reserve_exact((images_total - 1) * slot);
            } else {
                input.extend_from_slice(&tensor);
            }
        }
        Ok(input)
    }
}

/// Inference results of one request.
#[derive(Debug, Clone)]
pub struct Inferred {
    /// `images × classes` logits.
    pub logits: Vec<f32>,
    /// Longest time any of its jobs waited.
    pub queue: Duration,
    /// Longest inference of any of its batches.
    pub infer: Duration,
}

/// How a request's jobs are scheduled.
#[derive(Debug, Clone, Copy)]
pub struct Scheduling {
    /// Priority level index (0 = highest).
    pub level: usize,
    /// When the request arrived: admission counts the latency target from here.
    pub arrived: Instant,
    /// Dropped (504) if not started by then.
    pub deadline: Instant,
}

/// Submits `input` (`images × tensor_len`) in jobs of at most `max_batch_size` images and
/// gathers the logits in order.
pub async fn infer(
    batcher: &BatcherHandle,
    model: &str,
    input: Fp32Values,
    tensor_len: usize,
    max_batch_size: usize,
    scheduling: Scheduling,
    timeout_ms: u64,
) -> Result<Inferred, ServiceError> {
    let Scheduling {
        level,
        arrived,
        deadline,
    } = scheduling;
    let images = input.len() / tensor_len.max(1);
    let mut receivers = Vec::new();
    let chunk_values = max_batch_size.max(1) * tensor_len.max(1);
    // Most requests fit one batch, and move their buffer instead of copying it.
    for chunk in input.split(chunk_values) {
        let (respond, receiver) = oneshot::channel();
        let count = chunk.len() / tensor_len.max(1);
        let job = Job::new(chunk, count, level, arrived, deadline, respond);
        batcher
            .submit(job)
            .map_err(|error| batch_error(error, model, timeout_ms))?;
        receivers.push(receiver);
    }
    let mut result = Inferred {
        logits: Vec::new(),
        queue: Duration::ZERO,
        infer: Duration::ZERO,
    };
    for receiver in receivers {
        let output = receiver
            .await
            .map_err(|_| ServiceError::ShuttingDown)?
            .map_err(|error| batch_error(error, model, timeout_ms))?;
        result.logits.extend_from_slice(&output.logits);
        result.queue = result.queue.max(output.queue);
        result.infer = result.infer.max(output.infer);
    }
    if images == 0 {
        return Err(ServiceError::NoImages);
    }
    Ok(result)
}

/// Refuses at once what admission control would refuse if the request's first job (at most
/// `max_batch_size` of its `images`) were queued now: before its images are decoded.
pub fn check_admission(
    batcher: &BatcherHandle,
    model: &str,
    images: usize,
    max_batch_size: usize,
    scheduling: Scheduling,
    timeout_ms: u64,
) -> Result<(), ServiceError> {
    batcher
        .check_admission(
            images.min(max_batch_size.max(1)),
            scheduling.level,
            scheduling.arrived,
            scheduling.deadline,
        )
        .map_err(|error| batch_error(error, model, timeout_ms))
}

fn batch_error(error: BatchError, model: &str, timeout_ms: u64) -> ServiceError {
    match error {
        BatchError::QueueFull { capacity } => ServiceError::QueueFull {
            model: model.to_string(),
            capacity,
        },
        BatchError::WouldMissDeadline {
            expected_ms,
            budget_ms,
            bound,
        } => ServiceError::WouldMissDeadline {
            model: model.to_string(),
            expected_ms,
            budget_ms,
            bound,
        },
        BatchError::ShuttingDown => ServiceError::ShuttingDown,
        BatchError::DeadlineExceeded { .. } => ServiceError::DeadlineExceeded { timeout_ms },
        BatchError::Backend(message) => ServiceError::Internal(message),
    }
}
