//! The `config.toml` schema of a model directory (DESIGN §6), shared by the server and the trainer.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One model's `config.toml`. Every field is optional: what is missing is inferred from the
/// ONNX graph or defaulted. Unknown keys are an error so typos never pass silently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Whether this is the server's default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Which numbered versions are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_policy: Option<VersionPolicy>,
    /// The input tensor.
    #[serde(default)]
    pub input: InputConfig,
    /// How an image becomes the input tensor.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// The output tensor and its labels.
    #[serde(default)]
    pub output: OutputConfig,
    /// Dynamic batching limits.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Model instances (one ONNX Runtime session each).
    #[serde(default)]
    pub instances: InstancesConfig,
}

/// Which versions of a model are served (Triton's version policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionPolicy {
    /// Every version directory.
    All,
    /// The `n` highest-numbered versions.
    Latest(usize),
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

/// Colour space the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    /// Three channels, R, G, B.
    Rgb,
    /// One channel, Pillow's `convert("L")`.
    Gray,
}

/// `[input]`: the model's input tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// ONNX input name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `[C, H, W]`, without the batch dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dims: Option<[usize; 3]>,
    /// `rgb` or `gray`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Color>,
}

/// Resampling filter for the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Pillow's antialiased bilinear (torchvision's default).
    #[default]
    Bilinear,
    /// Pillow's antialiased bicubic.
    Bicubic,
    /// Nearest neighbour.
    Nearest,
}

/// `[preprocess]`: decode → colour → resize → centre crop → scale → normalise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Shorter side after resizing (torchvision `Resize(int)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<u32>,
    /// Centre crop `[H, W]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<[u32; 2]>,
    /// Resampling filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation: Option<Interpolation>,
    /// Divide u8 values by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    /// Per-channel mean, after scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, after scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain (changes pixels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg_dct_scaling: Option<bool>,
}

/// `[output]`: the model's output tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// ONNX output name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels file relative to the model directory; line n is class n.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
}

/// `[batching]`: dynamic batcher limits for this model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Largest batch handed to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// How long a partial batch may wait for a preferred size; 0 = work-conserving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_delay_us: Option<u64>,
    /// Batch sizes worth waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_batch_sizes: Option<Vec<usize>>,
    /// Images that may wait in the queue before requests get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_size: Option<usize>,
    /// Deadline for a request that sets none; also the cap on requested deadlines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timeout_ms: Option<u64>,
    /// Number of priority levels (1 = highest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_levels: Option<u32>,
    /// Priority of a request that asks for none (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_priority: Option<u32>,
}

/// `[instances]`: how many sessions run this model, and where.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesConfig {
    /// Number of sessions, each on its own worker thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Errors reading or writing a `config.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why, with the line and the offending key.
        source: Box<toml::de::Error>,
    },
    /// The config could not be serialised.
    #[error("cannot serialise config: {0}")]
    Serialize(#[from] toml::ser::Error),
}

impl ModelConfig {
    /// Parses a `config.toml` text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigFileError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Serialises to TOML text.
    pub fn to_toml(&self) -> Result<String, ConfigFileError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ConfigFileError> {
        std::fs::write(path, self.to_toml()?).map_err(|source| ConfigFileError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
default = true
version_policy = { latest = 1 }

[input]
name = "input"
dims = [1, 28, 28]
color = "gray"

[preprocess]
resize_shorter = 28
crop = [28, 28]
interpolation = "bilinear"
scale = 255.0
mean = [0.2860]
std = [0.3530]
jpeg_dct_scaling = false

[output]
name = "logits"
labels = "labels.txt"

[batching]
max_batch_size = 32
max_queue_delay_us = 0
preferred_batch_sizes = [8, 16, 32]
max_queue_size = 256
default_timeout_ms = 30000
priority_levels = 2
default_priority = 2

[instances]
count = 1
device = "cpu"
"#;

    #[test]
    fn parses_the_design_example() {
        let config = ModelConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(config.default, Some(true));
        assert_eq!(config.version_policy, Some(VersionPolicy::Latest(1)));
        assert_eq!(config.input.dims, Some([1, 28, 28]));
        assert_eq!(config.input.color, Some(Color::Gray));
        assert_eq!(config.preprocess.crop, Some([28, 28]));
        assert_eq!(config.batching.preferred_batch_sizes, Some(vec![8, 16, 32]));
        assert_eq!(config.instances.device.as_deref(), Some("cpu"));
    }

    #[test]
    fn round_trips_through_toml() {
        let config = ModelConfig::from_toml(EXAMPLE).unwrap();
        let again = ModelConfig::from_toml(&config.to_toml().unwrap()).unwrap();
        assert_eq!(config, again);
    }

    #[test]
    fn version_policies_parse() {
        let all = ModelConfig::from_toml("version_policy = \"all\"").unwrap();
        assert_eq!(all.version_policy, Some(VersionPolicy::All));
        let specific = ModelConfig::from_toml("version_policy = { specific = [1, 3] }").unwrap();
        assert_eq!(
            specific.version_policy,
            Some(VersionPolicy::Specific(vec![1, 3]))
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let error = ModelConfig::from_toml("[input]\nnmae = \"x\"").unwrap_err();
        assert!(error.to_string().contains("nmae"), "{error}");
        assert!(ModelConfig::from_toml("colour = \"rgb\"").is_err());
    }

    #[test]
    fn an_empty_file_is_a_valid_config() {
        assert_eq!(ModelConfig::from_toml("").unwrap(), ModelConfig::default());
    }
}
