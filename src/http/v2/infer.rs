//! `POST /v2/models/{m}[/versions/{v}]/infer`: JSON tensors and Triton's binary tensor
//! extension in and out, request parameters `priority` and `timeout` (µs), and the
//! classification extension.

use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::error::ApiError;
use super::super::{AppState, RequestId, body};
use super::model::ModelPath;
use crate::kserve::{
    self, BYTES, FP32, InferInput, InputData, OutputData, RequestedOutput, tensor,
};
use crate::listen::Arrival;
use crate::service::InferOptions;

/// Header giving the length of the JSON part when binary data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type Parameters = Map<String, Value>;

#[derive(Debug, Deserialize)]
struct RequestBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Vec<OutputBody>,
}

#[derive(Debug, Deserialize)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// Inference: FP32 `[N,C,H,W]` tensors or BYTES `[N]` encoded images, as JSON `data` or with
/// the binary tensor extension (`Inference-Header-Content-Length`); the classification
/// extension on outputs; request parameters `priority` and `timeout` (µs).
#[utoipa::path(post, operation_id = "v2_infer", path = "/models/{model}/infer", tag = "kserve-v2", params(super::model::ModelName),
    request_body(content(
        (Object = "application/json"),
        (super::super::classify::ImageBytes = "application/octet-stream"),
    ), description = "The V2 inference request (JSON, optionally followed by binary tensor data)"),
    responses(
        (status = 200, description = "Outputs (JSON, or JSON followed by binary data)", body = Object),
        (status = 400, description = "Malformed request or tensor", body = super::V2Error),
        (status = 404, description = "Unknown model", body = super::V2Error),
        (status = 429, description = "Queue full", body = super::V2Error),
        (status = 503, description = "Not ready", body = super::V2Error),
        (status = 504, description = "Deadline passed", body = super::V2Error),
    ),
    security((), ("bearer" = [])))]
pub async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    request_id: Option<axum::Extension<RequestId>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let request_id = request_id.map(|axum::Extension(id)| id.0);
    let result = handle(&state, &path, request).await;
    let (model, version) = match &result {
        Ok((response, _)) => (response.model_name.clone(), response.model_version.clone()),
        Err(_) => (
            kserve::metric_model(&state.classifier, &path.model),
            String::new(),
        ),
    };
    let response = match result {
        Ok((response, plan)) => encode(response, plan),
        Err(error) => error.into_response_with_id(request_id.as_deref()),
    };
    let code = response.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[model.as_str(), &version, "v2-http", &code])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[model.as_str(), "v2-http"])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// How to encode the response: the request id, and which outputs go binary.
struct Plan {
    id: Option<String>,
    binary: Vec<bool>,
}

/// A V2 inference request body, parsed and checked, ready for [`kserve::infer`].
pub struct ParsedInfer {
    /// The request.
    pub request: kserve::InferRequest,
    plan: Plan,
}

async fn handle(
    state: &AppState,
    path: &ModelPath,
    request: Request,
) -> Result<(kserve::InferResponse, Plan), ApiError> {
    let parsed = read_request(path, request, state.body_limits).await?;
    let response = kserve::infer(&state.classifier, parsed.request).await?;
    Ok((response, parsed.plan))
}

/// Reads and parses an infer request. The binary data follows the JSON header, so the body is
/// read with that point aligned: an FP32 tensor there is then used in place, not copied.
async fn read_request(
    path: &ModelPath,
    request: Request,
    limits: body::BodyLimits,
) -> Result<ParsedInfer, ApiError> {
    let header_length = header_length(request.headers())?;
    let arrived = request
        .extensions()
        .get::<Arrival>()
        .map(|arrival| arrival.0);
    let body =
        body::read_limited_aligned(request.into_body(), limits, header_length.unwrap_or(0)).await?;
    let mut parsed = parse_body(path, header_length, body)?;
    parsed.request.options.arrived = arrived;
    Ok(parsed)
}

/// Parses an infer body: the JSON part (all of it, or `header_length` bytes when binary data
/// follows) and the inputs' binary data.
pub fn parse_body(
    path: &ModelPath,
    header_length: Option<usize>,
    body: Bytes,
) -> Result<ParsedInfer, ApiError> {
    let (json, mut binary) = match header_length {
        Some(length) if length > body.len() => {
            return Err(ApiError::bad_request(
                "bad_header_length",
                format!(
                    "Inference-Header-Content-Length is {length} but the body has only {} bytes",
                    body.len()
                ),
            ));
        }
        Some(length) => (body.slice(..length), body.slice(length..)),
        None => (body, Bytes::new()),
    };
    let parsed: RequestBody = serde_json::from_slice(&json).map_err(|error| {
        ApiError::bad_request(
            "bad_json",
            format!("invalid inference request JSON: {error}"),
        )
    })?;
    let options = InferOptions {
        priority: u64_parameter(&parsed.parameters, "priority")?,
        timeout: u64_parameter(&parsed.parameters, "timeout")?.map(Duration::from_micros),
        arrived: None,
    };
    let binary_default = bool_parameter(&parsed.parameters, "binary_data_output")?.unwrap_or(false);
    let inputs = parsed
        .inputs
        .into_iter()
        .map(|input| parse_input(input, &mut binary))
        .collect::<Result<Vec<_>, _>>()?;
    if !binary.is_empty() {
        return Err(ApiError::bad_request(
            "bad_binary_data",
            format!(
                "{} bytes of binary data follow the inputs' binary_data_size total",
                binary.len()
            ),
        ));
    }
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    let mut binary_outputs = Vec::with_capacity(parsed.outputs.len().max(1));
    for output in parsed.outputs {
        binary_outputs
            .push(bool_parameter(&output.parameters, "binary_data")?.unwrap_or(binary_default));
        outputs.push(RequestedOutput {
            classification: u64_parameter(&output.parameters, "classification")?,
            name: output.name,
        });
    }
    if binary_outputs.is_empty() {
        binary_outputs.push(binary_default);
    }
    Ok(ParsedInfer {
        request: kserve::InferRequest {
            model: path.model.clone(),
            version: path.version.clone(),
            inputs,
            outputs,
            options,
        },
        plan: Plan {
            id: parsed.id,
            binary: binary_outputs,
        },
    })
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_header_length",
                format!("Inference-Header-Content-Length must be a byte count, got {value:?}"),
            )
        })
}

/// Decodes one input from JSON `data` or from the next `binary_data_size` bytes of `binary`.
fn parse_input(input: InputBody, binary: &mut Bytes) -> Result<InferInput, ApiError> {
    let name = input.name;
    if input.parameters.contains_key("shared_memory_region") {
        return Err(ApiError::bad_request(
            "unsupported_parameter",
            format!("input `{name}`: shared memory is not supported; send the data in the request"),
        ));
    }
    let data = match (
        u64_parameter(&input.parameters, "binary_data_size")?,
        input.data,
    ) {
        (Some(size), None) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return Err(ApiError::bad_request(
                    "bad_binary_data",
                    format!(
                        "input `{name}` has binary_data_size {size} but only {} bytes of binary data remain",
                        binary.len()
                    ),
                ));
            }
            tensor::decode(&name, &input.datatype, &input.shape, binary.split_to(size))?
        }
        (None, Some(data)) => json_data(&name, &input.datatype, data)?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_input",
                format!("input `{name}` has both `data` and binary_data_size"),
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "bad_input",
                format!("input `{name}` has neither `data` nor binary_data_size"),
            ));
        }
    };
    Ok(InferInput {
        name,
        datatype: input.datatype,
        shape: input.shape,
        data,
    })
}

/// Flattens (possibly nested) JSON `data`: numbers for FP32, base64 strings for BYTES.
fn json_data(name: &str, datatype: &str, data: Value) -> Result<InputData, ApiError> {
    let mut leaves = Vec::new();
    flatten(data, &mut leaves);
    match datatype {
        FP32 => leaves
            .into_iter()
            .enumerate()
            .map(|(position, value)| match value.as_f64() {
                Some(number) => Ok(number as f32),
                None => Err(ApiError::bad_request(
                    "bad_input",
                    format!("input `{name}` element {position} is {value}, not a number"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|values| InputData::Fp32(values.into())),
        BYTES => leaves
            .into_iter()
            .enumerate()
            .map(|(position, value)| match value {
                Value::String(text) => body::decode_base64(&text, Some(position)),
                other => Err(ApiError::bad_request(
                    "bad_input",
                    format!("input `{name}` element {position} is {other}, not a base64 string"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(InputData::Bytes),
        other => Err(tensor::unsupported_datatype(name, other).into()),
    }
}

fn flatten(value: Value, leaves: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|item| flatten(item, leaves)),
        leaf => leaves.push(leaf),
    }
}

fn u64_parameter(parameters: &Parameters, key: &str) -> Result<Option<u64>, ApiError> {
    match parameters.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "bad_parameter",
                format!("parameter `{key}` must be a non-negative integer, got {value}"),
            )
        }),
    }
}

fn bool_parameter(parameters: &Parameters, key: &str) -> Result<Option<bool>, ApiError> {
    match parameters.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_bool().map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "bad_parameter",
                format!("parameter `{key}` must be true or false, got {value}"),
            )
        }),
    }
}

/// The response, with the stages' times in `Server-Timing` as `/classify` sends them.
fn encode(response: kserve::InferResponse, plan: Plan) -> Response {
    let server_timing = HeaderValue::from_str(&response.timing.server_timing());
    let mut response = encode_body(response, plan);
    if let Ok(value) = server_timing {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

/// The body: JSON only, or (when any output is binary) the JSON header followed by the binary
/// outputs in order, with `Inference-Header-Content-Length`.
fn encode_body(response: kserve::InferResponse, plan: Plan) -> Response {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .enumerate()
        .map(|(position, output)| {
            let mut value = json!({
                "name": output.name,
                "datatype": output.data.datatype(),
                "shape": output.shape,
            });
            if plan.binary.get(position).copied().unwrap_or(false) {
                let raw = tensor::encode(&output.data);
                value["parameters"] = json!({ "binary_data_size": raw.len() });
                binary.extend_from_slice(&raw);
            } else {
                value["data"] = match &output.data {
                    OutputData::Fp32(values) => json!(values),
                    OutputData::Bytes(strings) => json!(strings),
                };
            }
            value
        })
        .collect();
    let mut header = json!({
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    });
    if let Some(id) = plan.id.filter(|id| !id.is_empty()) {
        header["id"] = Value::String(id);
    }
    let mut json = header.to_string().into_bytes();
    let any_binary = plan.binary.iter().any(|&binary| binary);
    if !any_binary {
        return ([(header::CONTENT_TYPE, "application/json")], json).into_response();
    }
    let header_length = HeaderValue::from(json.len());
    json.extend_from_slice(&binary);
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], json).into_response();
    response.headers_mut().insert(HEADER_LENGTH, header_length);
    response
}

/// Inference on one version (see [`infer`]).
#[utoipa::path(post, operation_id = "v2_infer_version", path = "/models/{model}/versions/{version}/infer", tag = "kserve-v2",
    params(super::model::ModelVersionName),
    request_body(content(
        (Object = "application/json"),
        (super::super::classify::ImageBytes = "application/octet-stream"),
    ), description = "The V2 inference request"),
    responses(
        (status = 200, description = "Outputs", body = Object),
        (status = 400, description = "Malformed request or tensor", body = super::V2Error),
        (status = 404, description = "Unknown model or version", body = super::V2Error),
    ),
    security((), ("bearer" = [])))]
pub async fn infer_version(
    state: State<AppState>,
    path: Path<ModelPath>,
    request_id: Option<axum::Extension<RequestId>>,
    request: Request,
) -> Response {
    infer(state, path, request_id, request).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[tokio::test]
    async fn a_binary_fp32_tensor_is_read_in_place_whatever_the_header_length() {
        let values: Vec<f32> = (0..3000).map(|i| i as f32 / 7.0 - 100.0).collect();
        let limits = body::BodyLimits {
            max_bytes: 1 << 20,
            read_timeout: Duration::from_secs(5),
        };
        let path = ModelPath {
            model: "m".into(),
            version: None,
        };
        for padding in 0..4 {
            let header = format!(
                r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,3000],"parameters":{{"binary_data_size":12000}}}}]}}{}"#,
                " ".repeat(padding)
            );
            let mut body = header.clone().into_bytes();
            for value in &values {
                body.extend_from_slice(&value.to_le_bytes());
            }
            let request = Request::builder()
                .method("POST")
                .uri("/v2/models/m/infer")
                .header("Inference-Header-Content-Length", header.len())
                .body(Body::from(body))
                .unwrap();
            let parsed = read_request(&path, request, limits).await.unwrap();
            let InputData::Fp32(read) = &parsed.request.inputs[0].data else {
                panic!("not FP32: {:?}", parsed.request.inputs[0].data);
            };
            assert_eq!(
                &**read,
                values.as_slice(),
                "header of {} bytes",
                header.len()
            );
            let little_endian = cfg!(target_endian = "little");
            assert_eq!(
                read.is_in_place(),
                little_endian,
                "header of {} bytes",
                header.len()
            );
        }
    }
}
