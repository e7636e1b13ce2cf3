//! Resolves a model's `config.toml` against its ONNX signature and labels into a complete
//! [`ModelSpec`]: every optional field inferred or defaulted, every inconsistency refused.

use std::time::Duration;

use super::config::{Color, Interpolation, ModelConfig};
use crate::preprocess::PreprocessSpec;

/// ImageNet channel statistics, the default for RGB models.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Name, element type and shape (`-1` where dynamic) of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSignature {
    /// Tensor name.
    pub name: String,
    /// Whether the elements are f32.
    pub is_f32: bool,
    /// Dimensions, `-1` where dynamic.
    pub shape: Vec<i64>,
}

/// A model's graph inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSignature {
    /// Every graph input.
    pub inputs: Vec<TensorSignature>,
    /// Every graph output.
    pub outputs: Vec<TensorSignature>,
}

/// Server-wide defaults that `config.toml` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDefaults {
    /// `--max-batch-size`.
    pub max_batch_size: usize,
    /// `--max-queue-delay-us`.
    pub max_queue_delay_us: u64,
    /// `--max-queue-size`.
    pub max_queue_size: usize,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--device`.
    pub device: String,
}

/// Batching, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchingSpec {
    /// Largest batch (images).
    pub max_batch_size: usize,
    /// Wait for a preferred size up to this long; zero = work-conserving.
    pub max_queue_delay: Duration,
    /// Sizes worth waiting for; also the warm-up sizes.
    pub preferred_batch_sizes: Vec<usize>,
    /// Queue capacity (images).
    pub max_queue_size: usize,
    /// Deadline of a request that sets none, and the cap on those that do.
    pub default_timeout: Duration,
    /// Priority levels (1 = highest).
    pub priority_levels: u32,
    /// Level of a request that asks for none.
    pub default_priority: u32,
    /// `--target-p99-ms`, when the batching was calibrated to it.
    pub target_p99: Option<Duration>,
    /// Batch times measured by that calibration, by batch size.
    pub measured_latency: Vec<(usize, Duration)>,
}

/// Everything the server needs to serve one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// ONNX input name.
    pub input_name: String,
    /// ONNX output name.
    pub output_name: String,
    /// Input dims without the batch dimension, `[C, H, W]`.
    pub dims: [usize; 3],
    /// Number of classes (logits per image).
    pub classes: usize,
    /// Class names; empty when the model has no labels file.
    pub labels: Vec<String>,
    /// Preprocessing.
    pub preprocess: PreprocessSpec,
    /// Batching.
    pub batching: BatchingSpec,
    /// Sessions to run.
    pub instances: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

/// Why a model cannot be served as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn pick<'a>(
    kind: &str,
    named: Option<&str>,
    tensors: &'a [TensorSignature],
) -> Result<&'a TensorSignature, SpecError> {
    match named {
        Some(name) => tensors
            .iter()
            .find(|tensor| tensor.name == name)
            .ok_or_else(|| {
                let names: Vec<_> = tensors.iter().map(|tensor| tensor.name.as_str()).collect();
                SpecError(format!(
                    "config names {kind} `{name}`, but the model has {names:?}"
                ))
            }),
        None => match tensors {
            [only] => Ok(only),
            _ => Err(SpecError(format!(
                "the model has {} {kind}s; name one in config.toml",
                tensors.len()
            ))),
        },
    }
}

/// Combines `config`, the ONNX `signature`, `labels` and server `defaults` into a spec.
pub fn resolve(
    config: &ModelConfig,
    signature: &ModelSignature,
    labels: Vec<String>,
    defaults: &ServerDefaults,
) -> Result<ModelSpec, SpecError> {
    let input = pick("input", config.input.name.as_deref(), &signature.inputs)?;
    let output = pick("output", config.output.name.as_deref(), &signature.outputs)?;
    if !input.is_f32 || !output.is_f32 {
        return Err(SpecError("input and output must be float32 tensors".into()));
    }
    let [_, graph_dims @ ..] = input.shape.as_slice() else {
        return Err(SpecError("the input has no dimensions".into()));
    };
    if graph_dims.len() != 3 {
        return Err(SpecError(format!(
            "input `{}` has shape {:?}; expected [N, C, H, W]",
            input.name, input.shape
        )));
    }
    let dims = match config.input.dims {
        Some(dims) => {
            for (axis, (&configured, &graph)) in dims.iter().zip(graph_dims).enumerate() {
                if graph > 0 && graph as usize != configured {
                    return Err(SpecError(format!(
                        "config input dims {dims:?} disagree with the model's {graph_dims:?} at axis {}",
                        axis + 1
                    )));
                }
            }
            dims
        }
        None => {
            let mut dims = [0; 3];
            for (slot, &graph) in dims.iter_mut().zip(graph_dims) {
                if graph <= 0 {
                    return Err(SpecError(format!(
                        "input shape {:?} is dynamic; set [input] dims in config.toml",
                        input.shape
                    )));
                }
                *slot = graph as usize;
            }
            dims
        }
    };
    let [channels, height, width] = dims;
    let color = match (config.input.color, channels) {
        (Some(Color::Gray), 1) | (None, 1) => Color::Gray,
        (Some(Color::Rgb), 3) | (None, 3) => Color::Rgb,
        (color, channels) => {
            return Err(SpecError(format!(
                "input has {channels} channels, which does not fit colour {color:?}"
            )));
        }
    };
    let crop_hw = [height as u32, width as u32];
    let preprocess_config = &config.preprocess;
    if let Some(crop) = preprocess_config.crop.filter(|crop| *crop != crop_hw) {
        return Err(SpecError(format!(
            "preprocess crop {crop:?} differs from the input's H, W {crop_hw:?}"
        )));
    }
    let (default_mean, default_std) = match color {
        Color::Gray => (vec![0.5], vec![0.5]),
        Color::Rgb => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
    };
    let mean = preprocess_config.mean.clone().unwrap_or(default_mean);
    let std = preprocess_config.std.clone().unwrap_or(default_std);
    if mean.len() != channels || std.len() != channels {
        return Err(SpecError(format!(
            "preprocess mean/std have {}/{} values for {channels} channels",
            mean.len(),
            std.len()
        )));
    }
    if std.iter().any(|&value| value == 0.0 || !value.is_finite()) {
        return Err(SpecError(
            "preprocess std values must be finite and non-zero".into(),
        ));
    }
    let scale = preprocess_config.scale.unwrap_or(255.0);
    let resize_shorter = preprocess_config
        .resize_shorter
        .unwrap_or(crop_hw[0].min(crop_hw[1]));
    if resize_shorter == 0 || scale == 0.0 {
        return Err(SpecError(
            "resize_shorter and scale must be positive".into(),
        ));
    }
    let preprocess = PreprocessSpec {
        color,
        resize_shorter,
        crop: crop_hw,
        interpolation: preprocess_config
            .interpolation
            .unwrap_or(Interpolation::Bilinear),
        scale,
        mean,
        std,
        jpeg_dct_scaling: preprocess_config.jpeg_dct_scaling.unwrap_or(false),
    };

    let classes = match (output.shape.as_slice(), labels.len()) {
        ([_, classes], _) if *classes > 0 => *classes as usize,
        ([_, _], count) if count > 0 => count,
        (shape, _) => {
            return Err(SpecError(format!(
                "output `{}` has shape {shape:?}; expected [N, classes] with a known class count \
                 (or a labels file)",
                output.name
            )));
        }
    };
    if !labels.is_empty() && labels.len() != classes {
        return Err(SpecError(format!(
            "labels file has {} lines but the model has {classes} classes",
            labels.len()
        )));
    }

    let batching = resolve_batching(config, input.shape.first().copied(), defaults)?;
    let instances = config.instances.count.unwrap_or(1);
    if instances == 0 {
        return Err(SpecError("[instances] count must be at least 1".into()));
    }
    Ok(ModelSpec {
        input_name: input.name.clone(),
        output_name: output.name.clone(),
        dims,
        classes,
        labels,
        preprocess,
        batching,
        instances,
        device: config
            .instances
            .device
            .clone()
            .unwrap_or_else(|| defaults.device.clone()),
    })
}

fn resolve_batching(
    config: &ModelConfig,
    graph_batch: Option<i64>,
    defaults: &ServerDefaults,
) -> Result<BatchingSpec, SpecError> {
    let batching = &config.batching;
    let mut max_batch_size = batching.max_batch_size.unwrap_or(defaults.max_batch_size);
    // A graph with a fixed batch dimension takes exactly that many images.
    if let Some(fixed) = graph_batch.filter(|&size| size > 0) {
        max_batch_size = max_batch_size.min(fixed as usize);
    }
    if max_batch_size == 0 {
        return Err(SpecError("max_batch_size must be at least 1".into()));
    }
    let preferred = batching.preferred_batch_sizes.clone().unwrap_or_default();
    if let Some(size) = preferred
        .iter()
        .find(|&&size| size == 0 || size > max_batch_size)
    {
        return Err(SpecError(format!(
            "preferred batch size {size} is outside 1..={max_batch_size}"
        )));
    }
    let priority_levels = batching.priority_levels.unwrap_or(1).max(1);
    let default_priority = batching.default_priority.unwrap_or(priority_levels);
    if default_priority == 0 || default_priority > priority_levels {
        return Err(SpecError(format!(
            "default_priority {default_priority} is outside 1..={priority_levels}"
        )));
    }
    let max_queue_size = batching.max_queue_size.unwrap_or(defaults.max_queue_size);
    if max_queue_size < max_batch_size {
        return Err(SpecError(format!(
            "max_queue_size {max_queue_size} is smaller than max_batch_size {max_batch_size}"
        )));
    }
    Ok(BatchingSpec {
        max_batch_size,
        max_queue_delay: Duration::from_micros(
            batching
                .max_queue_delay_us
                .unwrap_or(defaults.max_queue_delay_us),
        ),
        preferred_batch_sizes: preferred,
        max_queue_size,
        default_timeout: Duration::from_millis(
            batching
                .default_timeout_ms
                .unwrap_or(defaults.request_timeout_ms),
        ),
        priority_levels,
        default_priority,
        target_p99: None,
        measured_latency: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature(input: &[i64], output: &[i64]) -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSignature {
                name: "input".into(),
                is_f32: true,
                shape: input.to_vec(),
            }],
            outputs: vec![TensorSignature {
                name: "logits".into(),
                is_f32: true,
                shape: output.to_vec(),
            }],
        }
    }

    fn defaults() -> ServerDefaults {
        ServerDefaults {
            max_batch_size: 32,
            max_queue_delay_us: 0,
            max_queue_size: 256,
            request_timeout_ms: 30_000,
            device: "cpu".into(),
        }
    }

    fn labels(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("class {index}")).collect()
    }

    #[test]
    fn a_bare_model_is_inferred_from_its_graph() {
        let spec = resolve(
            &ModelConfig::default(),
            &signature(&[-1, 1, 28, 28], &[-1, 10]),
            vec![],
            &defaults(),
        )
        .unwrap();
        assert_eq!(spec.dims, [1, 28, 28]);
        assert_eq!(spec.preprocess.color, Color::Gray);
        assert_eq!(spec.preprocess.crop, [28, 28]);
        assert_eq!(spec.preprocess.resize_shorter, 28);
        assert_eq!(spec.classes, 10);
        assert_eq!(spec.batching.max_batch_size, 32);
        assert_eq!(spec.batching.default_timeout, Duration::from_secs(30));
    }

    #[test]
    fn config_overrides_server_defaults() {
        let config = ModelConfig::from_toml(
            "[batching]\nmax_batch_size = 8\nmax_queue_size = 16\ndefault_timeout_ms = 50",
        )
        .unwrap();
        let spec = resolve(
            &config,
            &signature(&[-1, 3, 224, 224], &[-1, 5]),
            labels(5),
            &defaults(),
        )
        .unwrap();
        assert_eq!(spec.batching.max_batch_size, 8);
        assert_eq!(spec.batching.max_queue_size, 16);
        assert_eq!(spec.batching.default_timeout, Duration::from_millis(50));
        assert_eq!(spec.preprocess.mean, IMAGENET_MEAN.to_vec());
    }

    #[test]
    fn mismatches_are_refused_with_a_reason() {
        let graph = signature(&[-1, 1, 28, 28], &[-1, 10]);
        let wrong_dims = ModelConfig::from_toml("[input]\ndims = [1, 32, 32]").unwrap();
        assert!(
            resolve(&wrong_dims, &graph, vec![], &defaults())
                .unwrap_err()
                .0
                .contains("disagree")
        );
        let wrong_color = ModelConfig::from_toml("[input]\ncolor = \"rgb\"").unwrap();
        assert!(resolve(&wrong_color, &graph, vec![], &defaults()).is_err());
        let wrong_labels =
            resolve(&ModelConfig::default(), &graph, labels(3), &defaults()).unwrap_err();
        assert!(wrong_labels.0.contains("3 lines"), "{wrong_labels}");
        let wrong_name = ModelConfig::from_toml("[output]\nname = \"prob\"").unwrap();
        assert!(
            resolve(&wrong_name, &graph, vec![], &defaults())
                .unwrap_err()
                .0
                .contains("prob")
        );
    }

    #[test]
    fn a_fixed_batch_dimension_caps_the_batch() {
        let spec = resolve(
            &ModelConfig::default(),
            &signature(&[1, 1, 28, 28], &[1, 10]),
            vec![],
            &defaults(),
        )
        .unwrap();
        assert_eq!(spec.batching.max_batch_size, 1);
    }

    #[test]
    fn dynamic_spatial_dims_need_config() {
        let graph = signature(&[-1, 3, -1, -1], &[-1, 10]);
        assert!(resolve(&ModelConfig::default(), &graph, vec![], &defaults()).is_err());
        let config = ModelConfig::from_toml("[input]\ndims = [3, 64, 64]").unwrap();
        assert_eq!(
            resolve(&config, &graph, vec![], &defaults()).unwrap().dims,
            [3, 64, 64]
        );
    }
}
