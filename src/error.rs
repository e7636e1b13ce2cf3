//! The service error: everything a classification can fail with, whatever the transport.

use crate::preprocess::PreprocessError;

/// Why a request failed. Each transport maps every variant to its status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No model of that name.
    #[error("unknown model `{model}`; available: {available}")]
    ModelNotFound {
        /// Requested name.
        model: String,
        /// Models served.
        available: String,
    },
    /// The model has no such version.
    #[error("model `{model}` has no version `{version}`; available: {available}")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// Requested version.
        version: String,
        /// Versions served.
        available: String,
    },
    /// The model version exists but cannot serve now.
    #[error("model `{model}` version {version} is not ready: {reason}")]
    ModelNotReady {
        /// Model name.
        model: String,
        /// Version.
        version: String,
        /// Its state.
        reason: String,
    },
    /// The request carried no image.
    #[error("the request contains no image")]
    NoImages,
    /// `top_k` outside `1..=classes`.
    #[error("top_k must be between 1 and {classes} (the model's class count), got {value}")]
    InvalidTopK {
        /// Requested value.
        value: i64,
        /// Class count.
        classes: usize,
    },
    /// Priority outside `0..=levels`.
    #[error("priority must be between 0 (default) and {levels}, got {value}")]
    InvalidPriority {
        /// Requested value.
        value: u64,
        /// Levels configured.
        levels: u32,
    },
    /// A tensor input of the wrong size or content.
    #[error("{0}")]
    InvalidTensor(String),
    /// One image could not be preprocessed.
    #[error("{}{source}", index.map(|index| format!("image {index}: ")).unwrap_or_default())]
    Image {
        /// 0-based position in a multi-image request.
        index: Option<usize>,
        /// What was wrong with it.
        source: PreprocessError,
    },
    /// The model's queue is full.
    #[error("queue for model `{model}` is full ({capacity} images waiting); retry later")]
    QueueFull {
        /// Model name.
        model: String,
        /// Capacity in images.
        capacity: usize,
    },
    /// Admission control: the queue ahead would run past the request's deadline or the
    /// model's latency target.
    #[error(
        "model `{model}` cannot answer in time: about {expected_ms} ms of work is queued ahead, and {budget_ms} ms {bound}; retry later or elsewhere"
    )]
    WouldMissDeadline {
        /// Model name.
        model: String,
        /// Expected time to the result.
        expected_ms: u64,
        /// The time allowed.
        budget_ms: u64,
        /// What allows it: "remain to the deadline" or "is the model's latency target".
        bound: &'static str,
    },
    /// The deadline passed before inference.
    #[error("deadline of {timeout_ms} ms exceeded before inference")]
    DeadlineExceeded {
        /// The request's timeout.
        timeout_ms: u64,
    },
    /// The server is draining or the model is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A model load requested through model control failed; versions already serving stay.
    #[error("failed to load model `{model}`: {reason}")]
    LoadFailed {
        /// Model name.
        model: String,
        /// What went wrong, per version.
        reason: String,
    },
    /// A bug or a runtime failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// A short snake_case name for the error, used as the JSON `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ModelNotFound { .. } => "model_not_found",
            Self::VersionNotFound { .. } => "version_not_found",
            Self::ModelNotReady { .. } => "model_not_ready",
            Self::NoImages => "no_images",
            Self::InvalidTopK { .. } => "invalid_top_k",
            Self::InvalidPriority { .. } => "invalid_priority",
            Self::InvalidTensor(_) => "invalid_tensor",
            Self::Image { source, .. } => match source {
                PreprocessError::NoData => "empty_image",
                PreprocessError::UnsupportedFormat(_) | PreprocessError::UnknownFormat => {
                    "unsupported_media_type"
                }
                PreprocessError::TooManyPixels { .. } => "image_too_large",
                PreprocessError::EmptyImage { .. } | PreprocessError::Decode { .. } => {
                    "undecodable_image"
                }
                PreprocessError::AspectRatio { .. } => "aspect_ratio_too_large",
                PreprocessError::RawLength { .. } => "invalid_raw_image",
                PreprocessError::Internal(_) => "internal",
            },
            Self::QueueFull { .. } => "queue_full",
            Self::WouldMissDeadline { .. } => "deadline_unmeetable",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::ShuttingDown => "unavailable",
            Self::LoadFailed { .. } => "load_failed",
            Self::Internal(_) => "internal",
        }
    }
}
