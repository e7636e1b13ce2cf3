//! The KServe V2 / Open Inference Protocol without a transport: checks a V2 inference request
//! against the model, runs it through the [`Classifier`], and shapes the outputs (raw logits or
//! Triton's classification strings). REST (`http::v2`) and gRPC (`grpc::kserve`) only encode.

pub mod model;
pub mod tensor;

use bytes::Bytes;

use crate::error::ServiceError;
use crate::service::{Classifier, ImageInput, InferOptions, LoadedModel, Timing};
use crate::values::Fp32Values;

/// The platform reported in metadata and configuration (Triton's name for ONNX Runtime).
pub const PLATFORM: &str = "onnxruntime_onnx";

/// The server name in `/v2` metadata.
pub const SERVER_NAME: &str = "resnet-serve";

/// Protocol extensions implemented (no shared memory, sequences, tracing or logging).
pub const EXTENSIONS: [&str; 7] = [
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
];

/// Datatype name of 32-bit float tensors.
pub const FP32: &str = "FP32";

/// Datatype name of byte-string tensors (encoded images in, classification strings out).
pub const BYTES: &str = "BYTES";

/// The elements of an input tensor, already decoded from the transport's encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    /// `FP32` values, row-major.
    Fp32(Fp32Values),
    /// `BYTES` elements (encoded images).
    Bytes(Vec<Bytes>),
}

/// One input tensor of a request.
#[derive(Debug, Clone)]
pub struct InferInput {
    /// Tensor name; must be the model's input name.
    pub name: String,
    /// Declared datatype (`FP32` or `BYTES`).
    pub datatype: String,
    /// Declared shape.
    pub shape: Vec<i64>,
    /// The elements.
    pub data: InputData,
}

/// One output the client asked for.
#[derive(Debug, Clone, Default)]
pub struct RequestedOutput {
    /// Tensor name; must be the model's output name.
    pub name: String,
    /// Triton's classification extension: the top `k` classes as strings instead of logits.
    pub classification: Option<u64>,
}

/// A transport-independent V2 inference request.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    /// Model name.
    pub model: String,
    /// Version; the newest ready version when `None`.
    pub version: Option<String>,
    /// Inputs (exactly one is accepted).
    pub inputs: Vec<InferInput>,
    /// Requested outputs; every output when empty.
    pub outputs: Vec<RequestedOutput>,
    /// `priority` and `timeout` request parameters.
    pub options: InferOptions,
}

/// The elements of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// Raw logits, row-major.
    Fp32(Vec<f32>),
    /// Classification strings `"<value>:<index>[:<label>]"`, row-major.
    Bytes(Vec<String>),
}

impl OutputData {
    /// The V2 datatype name.
    pub fn datatype(&self) -> &'static str {
        match self {
            Self::Fp32(_) => FP32,
            Self::Bytes(_) => BYTES,
        }
    }
}

/// One output tensor of a response.
#[derive(Debug, Clone)]
pub struct InferOutputTensor {
    /// Tensor name.
    pub name: String,
    /// Shape, batch first.
    pub shape: Vec<i64>,
    /// The elements.
    pub data: OutputData,
}

/// A transport-independent V2 inference response.
#[derive(Debug, Clone)]
pub struct InferResponse {
    /// Model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// Outputs in the order requested.
    pub outputs: Vec<InferOutputTensor>,
    /// Time spent in each stage.
    pub timing: Timing,
}

/// Runs a V2 inference: validates the input against the model, infers, shapes the outputs.
pub async fn infer(
    classifier: &Classifier,
    request: InferRequest,
) -> Result<InferResponse, ServiceError> {
    let model = classifier.resolve(Some(&request.model), request.version.as_deref())?;
    let outputs = requested_outputs(&model, &request.outputs)?;
    let input = single_input(&model, request.inputs)?;
    let max_batch_size = model.spec.batching.max_batch_size;
    let output = match input.data {
        InputData::Fp32(values) => {
            let batch = check_fp32_shape(&model, &input.datatype, &input.shape)?;
            check_batch(batch, max_batch_size)?;
            classifier
                .infer_tensor(&model, values, batch, request.options)
                .await?
        }
        InputData::Bytes(elements) => {
            check_bytes_shape(&input.shape, elements.len())?;
            check_batch(elements.len(), max_batch_size)?;
            let images = elements.into_iter().map(ImageInput::Encoded).collect();
            classifier
                .infer_images(&model, images, request.options, true)
                .await?
        }
    };
    let classes = model.spec.classes;
    let batch = output.logits.len() / classes.max(1);
    let tensors = outputs
        .into_iter()
        .map(|requested| {
            shape_output(
                &model,
                requested,
                &output.logits,
                batch,
                model.spec.output_name.clone(),
            )
        })
        .collect();
    Ok(InferResponse {
        model_name: output.model,
        model_version: output.version,
        outputs: tensors,
        timing: output.timing,
    })
}

/// The requested outputs, checked against the model; the model's one output when none.
fn requested_outputs(
    model: &LoadedModel,
    requested: &[RequestedOutput],
) -> Result<Vec<Option<usize>>, ServiceError> {
    if requested.is_empty() {
        return Ok(vec![None]);
    }
    requested
        .iter()
        .map(|output| {
            if output.name != model.spec.output_name {
                return Err(ServiceError::InvalidTensor(format!(
                    "unknown output `{}`; model `{}` has output `{}`",
                    output.name, model.name, model.spec.output_name
                )));
            }
            // As Triton: 0 means no classification, and k past the class count is clamped.
            Ok(output.classification.filter(|&k| k > 0).map(|k| {
                usize::try_from(k).map_or(model.spec.classes, |k| k.min(model.spec.classes))
            }))
        })
        .collect()
}

fn single_input(model: &LoadedModel, inputs: Vec<InferInput>) -> Result<InferInput, ServiceError> {
    let count = inputs.len();
    let mut inputs = inputs.into_iter();
    match (inputs.next(), count) {
        (Some(input), 1) if input.name == model.spec.input_name => Ok(input),
        (Some(input), 1) => Err(ServiceError::InvalidTensor(format!(
            "unknown input `{}`; model `{}` has input `{}`",
            input.name, model.name, model.spec.input_name
        ))),
        _ => Err(ServiceError::InvalidTensor(format!(
            "model `{}` takes exactly 1 input (`{}`), got {count}",
            model.name, model.spec.input_name
        ))),
    }
}

/// Checks an FP32 input's shape is `[N, C, H, W]` with the model's dims; returns N.
fn check_fp32_shape(
    model: &LoadedModel,
    datatype: &str,
    shape: &[i64],
) -> Result<usize, ServiceError> {
    let [c, h, w] = model.spec.dims;
    let expected = [c, h, w].map(|dim| dim as i64);
    match shape {
        [batch, dims @ ..] if *batch >= 0 && dims == expected => Ok(*batch as usize),
        _ => Err(ServiceError::InvalidTensor(format!(
            "input `{}` of datatype {datatype} must have shape [N, {c}, {h}, {w}], got {shape:?}",
            model.spec.input_name
        ))),
    }
}

/// Checks a BYTES input's shape is `[N]` (or `[N, 1]`) for `count` elements.
fn check_bytes_shape(shape: &[i64], count: usize) -> Result<(), ServiceError> {
    match shape {
        [batch] | [batch, 1] if *batch >= 0 && *batch as u64 == count as u64 => Ok(()),
        _ => Err(ServiceError::InvalidTensor(format!(
            "a BYTES input holds one encoded image per element and must have shape [N]; got shape {shape:?} with {count} elements"
        ))),
    }
}

fn check_batch(batch: usize, max_batch_size: usize) -> Result<(), ServiceError> {
    if batch == 0 || batch > max_batch_size {
        return Err(ServiceError::InvalidTensor(format!(
            "batch size {batch} is outside 1..={max_batch_size} (the model's max_batch_size)"
        )));
    }
    Ok(())
}

fn shape_output(
    model: &LoadedModel,
    classification: Option<usize>,
    logits: &[f32],
    batch: usize,
    name: String,
) -> InferOutputTensor {
    let classes = model.spec.classes;
    match classification {
        None => InferOutputTensor {
            name,
            shape: vec![batch as i64, classes as i64],
            data: OutputData::Fp32(logits.to_vec()),
        },
        Some(k) => InferOutputTensor {
            name,
            shape: vec![batch as i64, k as i64],
            data: OutputData::Bytes(
                logits
                    .chunks_exact(classes.max(1))
                    .flat_map(|row| classify(row, k, &model.spec.labels))
                    .collect(),
            ),
        },
    }
}

/// Triton's classification strings for one row: `"<value>:<index>[:<label>]"`, the `k`
/// largest raw values first (ties by lower index), `value` printed like C++ `std::to_string`.
pub fn classify(row: &[f32], k: usize, labels: &[String]) -> Vec<String> {
    let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(k)
        .map(|(index, value)| match labels.get(index) {
            Some(label) => format!("{value:.6}:{index}:{label}"),
            None => format!("{value:.6}:{index}"),
        })
        .collect()
}

/// The model a request names, for metric labels: its name if known, else `_unknown`.
pub fn metric_model(classifier: &Classifier, name: &str) -> String {
    match classifier.resolve(Some(name), None) {
        Ok(model) => model.name.clone(),
        Err(_) if classifier.registry().snapshot().contains_key(name) => name.to_string(),
        Err(_) => crate::metrics::UNKNOWN_MODEL.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_strings_sort_by_raw_value_with_labels() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            classify(&[1.5, -2.0, 3.25], 2, &labels),
            vec!["3.250000:2:c", "1.500000:0:a"]
        );
        assert_eq!(
            classify(&[1.0, 1.0], 2, &[]),
            vec!["1.000000:0", "1.000000:1"]
        );
    }

    #[test]
    fn bytes_shapes() {
        assert!(check_bytes_shape(&[2], 2).is_ok());
        assert!(check_bytes_shape(&[2, 1], 2).is_ok());
        assert!(check_bytes_shape(&[3], 2).is_err());
        assert!(check_bytes_shape(&[1, 2], 2).is_err());
    }
}
