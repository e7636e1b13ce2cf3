//! Writes a model-repository directory (DESIGN §6): ONNX, config, labels, golden file, card.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};
use serde::Serialize;

use super::TrainError;
use super::data::{Dataset, Normalization};
use super::onnx::{INPUT_NAME, OUTPUT_NAME, to_onnx};
use super::resnet::ResNet;
use crate::repository::config::{
    BatchingConfig, Color, InputConfig, InstancesConfig, Interpolation, ModelConfig, OutputConfig,
    PreprocessConfig, VersionPolicy,
};

/// Golden images written with their eval-mode logits.
pub struct Golden<'a> {
    /// Images `[C, S, S]` with `S` = the config's `resize_shorter` (the server's resize is then
    /// the identity and only its centre crop applies).
    pub images: &'a Dataset,
    /// Which images of `images` to write.
    pub indices: Vec<usize>,
}

/// Everything besides the weights that goes into the directory.
pub struct ModelDirSpec<'a> {
    /// `[C, H, W]` of the network input.
    pub input_dims: [usize; 3],
    /// Shorter side the server resizes to before the centre crop.
    pub resize_shorter: u32,
    /// Per-channel normalisation after /255.
    pub normalization: Normalization,
    /// Class names; line n of `labels.txt` is class n.
    pub labels: Vec<String>,
    /// Whether this is the server's default model.
    pub default: bool,
    /// Golden cases, if any.
    pub golden: Option<Golden<'a>>,
    /// The model card (`README.md`) text.
    pub card: String,
}

#[derive(Serialize)]
struct GoldenCase {
    file: String,
    label: u32,
    logits: Vec<f32>,
}

#[derive(Serialize)]
struct GoldenFile {
    atol: f32,
    rtol: f32,
    cases: Vec<GoldenCase>,
}

/// The `config.toml` for `spec`, through the server's own schema.
pub fn config(spec: &ModelDirSpec) -> ModelConfig {
    let [channels, height, width] = spec.input_dims;
    ModelConfig {
        default: Some(spec.default),
        version_policy: Some(VersionPolicy::Latest(1)),
        input: InputConfig {
            name: Some(INPUT_NAME.into()),
            dims: Some(spec.input_dims),
            color: Some(if channels == 1 {
                Color::Gray
            } else {
                Color::Rgb
            }),
        },
        preprocess: PreprocessConfig {
            resize_shorter: Some(spec.resize_shorter),
            crop: Some([height as u32, width as u32]),
            interpolation: Some(Interpolation::Bilinear),
            scale: Some(255.0),
            mean: Some(spec.normalization.mean.clone()),
            std: Some(spec.normalization.std.clone()),
            jpeg_dct_scaling: Some(false),
        },
        output: OutputConfig {
            name: Some(OUTPUT_NAME.into()),
            labels: Some("labels.txt".into()),
        },
        batching: BatchingConfig {
            max_batch_size: Some(32),
            max_queue_delay_us: Some(0),
            preferred_batch_sizes: Some(vec![8, 16, 32]),
            max_queue_size: Some(256),
            default_timeout_ms: Some(30_000),
            priority_levels: Some(2),
            default_priority: Some(2),
        },
        instances: InstancesConfig {
            count: Some(1),
            device: Some("cpu".into()),
        },
    }
}

/// Eval-mode logits for the centre `[H, W]` crops of `indices`, normalised as the server does.
pub fn logits_of(
    model: &ResNet,
    images: &Dataset,
    indices: &[usize],
    input_dims: [usize; 3],
    normalization: &Normalization,
) -> Result<Tensor, TrainError> {
    let [channels, height, width] = input_dims;
    let [_, full_h, full_w] = images.dims;
    if images.dims[0] != channels || full_h < height || full_w < width {
        return Err(TrainError::Export(format!(
            "golden images {:?} do not cover input {input_dims:?}",
            images.dims
        )));
    }
    // Python's round-half-to-even of (full - crop) / 2, as the server computes crop offsets.
    let offset = |full: usize, crop: usize| ((full - crop) as f64 / 2.0).round_ties_even() as usize;
    let (top, left) = (offset(full_h, height), offset(full_w, width));
    let mut values = Vec::with_capacity(indices.len() * channels * height * width);
    for &index in indices {
        let image = images
            .image(index)
            .ok_or_else(|| TrainError::Export(format!("no golden image {index}")))?;
        for channel in 0..channels {
            for y in top..top + height {
                let row = (channel * full_h + y) * full_w + left;
                let pixels = image.get(row..row + width).unwrap_or_default();
                values.extend(
                    pixels
                        .iter()
                        .map(|&value| normalization.apply(channel, value)),
                );
            }
        }
    }
    let device = model.fc.weight.device();
    let x = Tensor::from_vec(
        values,
        (indices.len(), channels, height, width),
        &Device::Cpu,
    )?
    .to_device(device)?;
    Ok(model.forward_t(&x, false)?)
}

fn save_png(images: &Dataset, index: usize, path: &Path) -> Result<(), TrainError> {
    let [channels, height, width] = images.dims;
    let pixels = images
        .image(index)
        .ok_or_else(|| TrainError::Export(format!("no golden image {index}")))?;
    let (h, w) = (height as u32, width as u32);
    let bad = || TrainError::Export(format!("golden image {index} has the wrong size"));
    if channels == 1 {
        GrayImage::from_raw(w, h, pixels.to_vec())
            .ok_or_else(bad)?
            .save(path)?;
    } else {
        let plane = height * width;
        let interleaved = (0..plane)
            .flat_map(|i| (0..3).map(move |c| pixels.get(c * plane + i).copied().unwrap_or(0)));
        RgbImage::from_raw(w, h, interleaved.collect())
            .ok_or_else(bad)?
            .save(path)?;
    }
    Ok(())
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), TrainError> {
    std::fs::write(path, contents).map_err(|source| TrainError::io(path, source))
}

/// Writes `1/model.onnx`, `config.toml`, `labels.txt`, `golden.json` (+ `golden/*.png`) and
/// `README.md` under `output`.
pub fn write_model_dir(
    model: &ResNet,
    spec: &ModelDirSpec,
    output: &Path,
) -> Result<(), TrainError> {
    let version = output.join("1");
    std::fs::create_dir_all(&version).map_err(|source| TrainError::io(&version, source))?;
    write(
        &version.join("model.onnx"),
        to_onnx(model, spec.input_dims)?,
    )?;
    config(spec).write(&output.join("config.toml"))?;
    write(&output.join("labels.txt"), spec.labels.join("\n") + "\n")?;
    if let Some(golden) = &spec.golden {
        let dir = output.join("golden");
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::io(&dir, source))?;
        let logits = logits_of(
            model,
            golden.images,
            &golden.indices,
            spec.input_dims,
            &spec.normalization,
        )?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut cases = Vec::new();
        for (case, (&index, logits)) in golden.indices.iter().zip(logits).enumerate() {
            let file = format!("golden/{case}.png");
            save_png(golden.images, index, &output.join(&file))?;
            let label = golden.images.labels.get(index).copied().unwrap_or(0);
            cases.push(GoldenCase {
                file,
                label,
                logits,
            });
        }
        let golden = GoldenFile {
            atol: 1e-4,
            rtol: 1e-3,
            cases,
        };
        write(
            &output.join("golden.json"),
            serde_json::to_string_pretty(&golden)? + "\n",
        )?;
    }
    write(&output.join("README.md"), &spec.card)
}

/// Writes a float32 `.npy` file (for `scripts/check_onnx.py`).
pub fn write_npy(path: &Path, dims: &[usize], values: &[f32]) -> Result<(), TrainError> {
    let shape: Vec<String> = dims.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("{},", shape.join(", "))
    } else {
        shape.join(", ")
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|value| value.to_le_bytes()));
    write(path, bytes)
}

/// Today's UTC date as `YYYY-MM-DD`, for model cards.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
