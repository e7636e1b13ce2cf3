//! Inference backends: the `Backend` trait the batcher's workers drive, and ONNX Runtime.

pub mod ort;

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider on this GPU.
    Cuda(u32),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{other}`; expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(formatter, "cpu"),
            Self::Cuda(index) => write!(formatter, "cuda:{index}"),
        }
    }
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The ONNX Runtime library is missing, unloadable or the wrong version.
    #[error("{0}")]
    Library(String),
    /// The model file could not be opened as an ONNX Runtime session.
    #[error("cannot load `{path}`: {message}")]
    Load {
        /// The model file.
        path: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// The model's inputs or outputs are not what we serve.
    #[error("model `{path}`: {message}")]
    Signature {
        /// The model file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// CUDA was requested but cannot be used.
    #[error(
        "CUDA execution provider unavailable: {0} (pass --allow-cpu-fallback to run on the CPU)"
    )]
    CudaUnavailable(String),
    /// Running a batch failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// One model instance: runs a batch `input` of `batch` images and returns `batch × classes`
/// logits, row-major.
pub trait Backend: Send + 'static {
    /// Runs one batch.
    fn infer(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:2".parse(), Ok(Device::Cuda(2)));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }
}
