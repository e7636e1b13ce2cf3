//! The trainer: ResNets in candle, datasets, training loop and ONNX export.

pub mod batch_norm;
pub mod bench;
pub mod card;
pub mod conv;
pub mod data;
pub mod layers;
pub mod model_dir;
pub mod onnx;
pub mod optim;
pub mod params;
pub mod resnet;
pub mod trainer;

/// Everything that can go wrong while building, training or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The model definition is invalid.
    #[error("model: {0}")]
    Model(String),
    /// A dataset is missing or malformed.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint is missing, malformed or for another model.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The ONNX graph could not be built.
    #[error("onnx export: {0}")]
    Export(String),
    /// `config.toml` could not be written.
    #[error(transparent)]
    Config(#[from] crate::repository::config::ConfigFileError),
    /// An image could not be encoded or decoded.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// JSON could not be written or read.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl TrainError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
