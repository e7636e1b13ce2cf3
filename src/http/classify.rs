//! `POST /classify`: parse, call the classifier, answer with predictions and `Server-Timing`.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::{AppState, RequestId, body};
use crate::listen::Arrival;
use crate::metrics::UNKNOWN_MODEL;
use crate::service::{Classification, ClassifyRequest, ImageInput, Prediction};

/// Query parameters of `/classify`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClassifyParams {
    /// Model name [default: the server's default model].
    pub model: Option<String>,
    /// Model version [default: the newest ready version].
    pub version: Option<String>,
    /// Predictions per image, 1..=classes [default: 5].
    #[param(value_type = Option<u32>)]
    pub top_k: Option<String>,
}

/// Encoded image bytes (JPEG, PNG, WebP, GIF, BMP or TIFF; the format is sniffed).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// A JSON body: `image` (answered with `predictions`) or `images` (answered with `results`),
/// standard or URL-safe base64, optionally a `data:image/...;base64,` URL.
#[derive(utoipa::ToSchema)]
pub struct ClassifyJson {
    /// One base64 image.
    pub image: Option<String>,
    /// Several base64 images.
    pub images: Option<Vec<String>>,
}

/// A multipart body: one or more file parts, any field names, order kept.
#[derive(utoipa::ToSchema)]
pub struct ClassifyMultipart {
    /// The images.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub file: Vec<Vec<u8>>,
}

/// One prediction in the JSON response.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PredictionBody {
    /// Class name.
    pub label: String,
    /// 0-based class index.
    pub index: usize,
    /// Softmax probability.
    pub score: f32,
}

/// The predictions of one image.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultBody {
    /// Top-k, most probable first.
    pub predictions: Vec<PredictionBody>,
}

/// The `/classify` response: `predictions` for single-image forms, `results` otherwise.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClassifyResponse {
    /// Model that answered.
    pub model: String,
    /// Its version.
    pub version: String,
    /// Single-image forms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<PredictionBody>>,
    /// Multi-image forms, in request order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ResultBody>>,
}

fn prediction_bodies(predictions: Vec<Prediction>) -> Vec<PredictionBody> {
    predictions
        .into_iter()
        .map(|prediction| PredictionBody {
            label: prediction.label,
            index: prediction.index,
            score: prediction.score,
        })
        .collect()
}

/// Classifies one or more images.
#[utoipa::path(
    post,
    path = "/classify",
    tag = "classify",
    params(
        ClassifyParams,
        ("x-request-id" = Option<String>, Header, description = "Echoed; generated when absent"),
        ("x-request-timeout-ms" = Option<u64>, Header, description = "Deadline, capped by the model's default_timeout_ms"),
        ("x-priority" = Option<u32>, Header, description = "0 = the model's default, 1 = highest"),
    ),
    request_body(content(
        (ImageBytes = "image/*"),
        (ImageBytes = "application/octet-stream"),
        (ClassifyJson = "application/json"),
        (ClassifyMultipart = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "Predictions; a `Server-Timing` header gives decode, queue, infer and total milliseconds", body = ClassifyResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Body or image too large", body = ErrorBody),
        (status = 415, description = "Not an image type, or a format we do not decode", body = ErrorBody),
        (status = 422, description = "Undecodable image or aspect ratio too large", body = ErrorBody),
        (status = 429, description = "Queue full or too many requests in flight", body = ErrorBody),
        (status = 503, description = "Model not ready or server draining", body = ErrorBody),
        (status = 504, description = "Deadline passed before inference", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub async fn classify(
    State(state): State<AppState>,
    query: Result<Query<ClassifyParams>, axum::extract::rejection::QueryRejection>,
    request_id: Option<axum::Extension<RequestId>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let request_id = request_id.map(|axum::Extension(id)| id.0);
    let model_param = query
        .as_ref()
        .ok()
        .and_then(|Query(params)| params.model.clone());
    let result = handle(&state, query, request).await;
    let (model, version) = match &result {
        Ok((classification, _)) => (classification.model.clone(), classification.version.clone()),
        Err(_) => match state.classifier.resolve(model_param.as_deref(), None) {
            Ok(model) => (model.name.clone(), String::new()),
            Err(_) => (UNKNOWN_MODEL.to_string(), String::new()),
        },
    };
    let response = match result {
        Ok((classification, multi)) => success(classification, multi),
        Err(error) => error.into_response_with_id(request_id.as_deref()),
    };
    let code = response.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[model.as_str(), &version, "http", &code])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[model.as_str(), "http"])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn handle(
    state: &AppState,
    query: Result<Query<ClassifyParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<(Classification, bool), ApiError> {
    let Query(params) =
        query.map_err(|rejection| ApiError::bad_request("bad_query", rejection.body_text()))?;
    let top_k = params
        .top_k
        .as_deref()
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_top_k",
                    format!("top_k must be an integer, got `{text}`"),
                )
            })
        })
        .transpose()?;
    let headers = request.headers().clone();
    let arrived = request
        .extensions()
        .get::<Arrival>()
        .map(|arrival| arrival.0);
    let timeout = header_number(&headers, "x-request-timeout-ms")?.map(Duration::from_millis);
    let priority = header_number(&headers, "x-priority")?;
    let parsed = body::parse(request, state.body_limits).await?;
    let multi = parsed.multi;
    let classification = state
        .classifier
        .classify(ClassifyRequest {
            model: params.model,
            version: params.version,
            top_k,
            images: parsed.images.into_iter().map(ImageInput::Encoded).collect(),
            priority,
            timeout,
            numbered: multi,
            arrived,
        })
        .await?;
    Ok((classification, multi))
}

fn header_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_header",
                format!("header {name} must be a non-negative integer, got {value:?}"),
            )
        })
}

fn success(classification: Classification, multi: bool) -> Response {
    let timing = classification.timing;
    let mut results = classification.results.into_iter().map(prediction_bodies);
    let body = if multi {
        ClassifyResponse {
            model: classification.model,
            version: classification.version,
            predictions: None,
            results: Some(
                results
                    .map(|predictions| ResultBody { predictions })
                    .collect(),
            ),
        }
    } else {
        ClassifyResponse {
            model: classification.model,
            version: classification.version,
            predictions: Some(results.next().unwrap_or_default()),
            results: None,
        }
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&timing.server_timing()) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}
