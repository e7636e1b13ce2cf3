//! Conversions between `inference.*` protobuf messages and the transport-neutral V2 types:
//! raw or typed input tensors in, raw or typed outputs back, Triton's model configuration.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::proto::{
    self, InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor,
};
use crate::error::ServiceError;
use crate::kserve::{
    self, BYTES, FP32, InferInput, InputData, OutputData, RequestedOutput, model as v2, tensor,
};
use crate::service::{InferOptions, LoadedModel};

/// A request converted, and how its outputs are to be encoded.
pub struct Converted {
    /// The request.
    pub request: kserve::InferRequest,
    /// Request id to echo.
    pub id: String,
    /// Whether the inputs came as `raw_input_contents` (then outputs go raw too, as Triton).
    pub raw: bool,
}

/// Converts a `ModelInferRequest`; `deadline` is the call's `grpc-timeout`, if any.
pub fn request(
    message: ModelInferRequest,
    deadline: Option<Duration>,
) -> Result<Converted, ServiceError> {
    let priority = unsigned_parameter(&message.parameters, "priority")?;
    let timeout = unsigned_parameter(&message.parameters, "timeout")?.map(Duration::from_micros);
    let timeout = match (timeout, deadline) {
        (Some(timeout), Some(deadline)) => Some(timeout.min(deadline)),
        (timeout, deadline) => timeout.or(deadline),
    };
    let raw = !message.raw_input_contents.is_empty();
    if raw && message.raw_input_contents.len() != message.inputs.len() {
        return Err(ServiceError::InvalidTensor(format!(
            "the request has {} inputs but {} raw_input_contents",
            message.inputs.len(),
            message.raw_input_contents.len()
        )));
    }
    let mut raw_contents = message.raw_input_contents.into_iter();
    let inputs = message
        .inputs
        .into_iter()
        .map(|input| {
            let data = match raw_contents.next() {
                Some(raw) => tensor::decode(&input.name, &input.datatype, &input.shape, raw)?,
                None => typed_input(&input)?,
            };
            Ok(InferInput {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                data,
            })
        })
        .collect::<Result<Vec<_>, ServiceError>>()?;
    let outputs = message
        .outputs
        .into_iter()
        .map(|output| {
            Ok(RequestedOutput {
                classification: unsigned_parameter(&output.parameters, "classification")?,
                name: output.name,
            })
        })
        .collect::<Result<Vec<_>, ServiceError>>()?;
    let version = Some(message.model_version).filter(|version| !version.is_empty());
    Ok(Converted {
        request: kserve::InferRequest {
            model: message.model_name,
            version,
            inputs,
            outputs,
            options: InferOptions {
                priority,
                timeout,
                arrived: None,
            },
        },
        id: message.id,
        raw,
    })
}

fn typed_input(input: &InferInputTensor) -> Result<InputData, ServiceError> {
    let contents = input.contents.as_ref();
    match input.datatype.as_str() {
        FP32 => Ok(InputData::Fp32(
            contents
                .map(|contents| contents.fp32_contents.clone())
                .unwrap_or_default()
                .into(),
        )),
        BYTES => Ok(InputData::Bytes(
            contents
                .map(|contents| {
                    contents
                        .bytes_contents
                        .iter()
                        .cloned()
                        .map(Bytes::from)
                        .collect()
                })
                .unwrap_or_default(),
        )),
        other => Err(tensor::unsupported_datatype(&input.name, other)),
    }
}

/// An integer parameter given as `uint64_param` or a non-negative `int64_param`.
fn unsigned_parameter(
    parameters: &HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<u64>, ServiceError> {
    let Some(parameter) = parameters.get(key) else {
        return Ok(None);
    };
    match &parameter.parameter_choice {
        Some(ParameterChoice::Uint64Param(value)) => Ok(Some(*value)),
        Some(ParameterChoice::Int64Param(value)) if *value >= 0 => Ok(Some(*value as u64)),
        other => Err(ServiceError::InvalidTensor(format!(
            "parameter `{key}` must be a non-negative integer, got {other:?}"
        ))),
    }
}

/// Encodes a V2 response: raw outputs or typed contents.
pub fn response(response: kserve::InferResponse, id: String, raw: bool) -> ModelInferResponse {
    let mut raw_output_contents = Vec::new();
    let outputs = response
        .outputs
        .into_iter()
        .map(|output| {
            let datatype = output.data.datatype().to_string();
            let contents = if raw {
                raw_output_contents.push(tensor::encode(&output.data));
                None
            } else {
                Some(match output.data {
                    OutputData::Fp32(values) => InferTensorContents {
                        fp32_contents: values,
                        ..InferTensorContents::default()
                    },
                    OutputData::Bytes(strings) => InferTensorContents {
                        bytes_contents: strings.into_iter().map(String::into_bytes).collect(),
                        ..InferTensorContents::default()
                    },
                })
            };
            InferOutputTensor {
                name: output.name,
                datatype,
                shape: output.shape,
                parameters: HashMap::new(),
                contents,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents,
    }
}

/// Triton's model configuration for a loaded model.
pub fn model_config(model: &LoadedModel) -> proto::ModelConfig {
    use proto::model_instance_group::Kind;
    let spec = &model.spec;
    let batching = &spec.batching;
    let gpus = v2::gpus(model);
    let instance_group = proto::ModelInstanceGroup {
        name: model.name.clone(),
        kind: if gpus.is_some() { Kind::Gpu } else { Kind::Cpu } as i32,
        count: spec.instances as i32,
        gpus: gpus.unwrap_or_default(),
        ..proto::ModelInstanceGroup::default()
    };
    let dynamic_batching = proto::ModelDynamicBatching {
        preferred_batch_size: batching
            .preferred_batch_sizes
            .iter()
            .map(|&size| size as i32)
            .collect(),
        max_queue_delay_microseconds: batching.max_queue_delay.as_micros() as u64,
        priority_levels: u64::from(batching.priority_levels),
        default_priority_level: u64::from(batching.default_priority),
        default_queue_policy: Some(proto::ModelQueuePolicy {
            timeout_action: proto::model_queue_policy::TimeoutAction::Reject as i32,
            default_timeout_microseconds: batching.default_timeout.as_micros() as u64,
            allow_timeout_override: true,
            max_queue_size: u32::try_from(batching.max_queue_size).unwrap_or(u32::MAX),
        }),
        ..proto::ModelDynamicBatching::default()
    };
    proto::ModelConfig {
        name: model.name.clone(),
        platform: kserve::PLATFORM.into(),
        backend: "onnxruntime".into(),
        max_batch_size: spec.batching.max_batch_size as i32,
        input: vec![proto::ModelInput {
            name: spec.input_name.clone(),
            data_type: proto::DataType::TypeFp32 as i32,
            format: proto::model_input::Format::Nchw as i32,
            dims: spec.dims.iter().map(|&dim| dim as i64).collect(),
            ..proto::ModelInput::default()
        }],
        output: vec![proto::ModelOutput {
            name: spec.output_name.clone(),
            data_type: proto::DataType::TypeFp32 as i32,
            dims: vec![spec.classes as i64],
            ..proto::ModelOutput::default()
        }],
        scheduling_choice: Some(proto::model_config::SchedulingChoice::DynamicBatching(
            dynamic_batching,
        )),
        instance_group: vec![instance_group],
        parameters: v2::parameters(model)
            .into_iter()
            .map(|(name, value)| {
                let value = proto::ModelParameter {
                    string_value: value,
                };
                (name.to_string(), value)
            })
            .collect(),
        ..proto::ModelConfig::default()
    }
}

/// Triton's statistics message for one model version.
pub fn statistics(stats: v2::ModelStatistics) -> proto::ModelStatistics {
    let duration = |duration: v2::StatisticDuration| {
        Some(proto::StatisticDuration {
            count: duration.count,
            ns: duration.ns,
        })
    };
    proto::ModelStatistics {
        name: stats.name,
        version: stats.version,
        inference_count: stats.inference_count,
        execution_count: stats.execution_count,
        inference_stats: Some(proto::InferStatistics {
            success: duration(stats.success),
            fail: duration(stats.fail),
            queue: duration(stats.queue),
            compute_infer: duration(stats.compute_infer),
            ..proto::InferStatistics::default()
        }),
        ..proto::ModelStatistics::default()
    }
}
