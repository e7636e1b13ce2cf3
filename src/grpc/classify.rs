//! `resnet.v1.ClassifyService`: Classify, ClassifyStream and ListModels over the service facade.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::proto::classify_service_server::ClassifyService;
use super::proto::{self, image::Data};
use super::status::{grpc_timeout, status};
use crate::error::ServiceError;
use crate::listen::Arrival;
use crate::metrics::{Metrics, UNKNOWN_MODEL};
use crate::preprocess::Channels;
use crate::service::{Classification, Classifier, ClassifyRequest, ImageInput};

/// How many stream requests are processed at once (answers still go out in order).
const STREAM_CONCURRENCY: usize = 4;

/// The ClassifyService implementation.
pub struct ClassifyApi {
    classifier: Arc<Classifier>,
    metrics: Arc<Metrics>,
}

impl ClassifyApi {
    /// A service over the facade.
    pub fn new(classifier: Arc<Classifier>, metrics: Arc<Metrics>) -> Self {
        Self {
            classifier,
            metrics,
        }
    }
}

/// Converts a protobuf request into the service's, validating what protobuf cannot.
fn to_service_request(
    request: proto::ClassifyRequest,
    timeout: Option<Duration>,
    arrived: Option<Instant>,
) -> Result<ClassifyRequest, Status> {
    let mut images = Vec::with_capacity(request.images.len());
    for (index, image) in request.images.into_iter().enumerate() {
        let input = match image.data {
            Some(Data::Encoded(bytes)) => ImageInput::Encoded(Bytes::from(bytes)),
            Some(Data::Raw(raw)) => {
                let channels = match proto::PixelFormat::try_from(raw.format) {
                    Ok(proto::PixelFormat::Rgb8) => Channels::Rgb,
                    Ok(proto::PixelFormat::Gray8) => Channels::Gray,
                    _ => {
                        return Err(Status::invalid_argument(format!(
                            "image {index}: raw pixel format must be PIXEL_FORMAT_RGB8 or PIXEL_FORMAT_GRAY8, got {}",
                            raw.format
                        )));
                    }
                };
                ImageInput::Raw {
                    width: raw.width,
                    height: raw.height,
                    channels,
                    pixels: Bytes::from(raw.pixels),
                }
            }
            None => {
                return Err(Status::invalid_argument(format!(
                    "image {index} has no data"
                )));
            }
        };
        images.push(input);
    }
    let numbered = images.len() > 1;
    Ok(ClassifyRequest {
        model: Some(request.model).filter(|model| !model.is_empty()),
        version: Some(request.version).filter(|version| !version.is_empty()),
        top_k: request.top_k.map(i64::from),
        images,
        priority: Some(u64::from(request.priority)),
        timeout,
        numbered,
        arrived,
    })
}

fn to_response(id: String, classification: Classification) -> proto::ClassifyResponse {
    let milliseconds = |duration: Duration| (duration.as_secs_f64() * 1000.0) as f32;
    let timing = classification.timing;
    proto::ClassifyResponse {
        id,
        model: classification.model,
        version: classification.version,
        results: classification
            .results
            .into_iter()
            .map(|predictions| proto::Result {
                predictions: predictions
                    .into_iter()
                    .map(|prediction| proto::Prediction {
                        label: prediction.label,
                        index: prediction.index as u32,
                        score: prediction.score,
                    })
                    .collect(),
            })
            .collect(),
        timing: Some(proto::Timing {
            decode_ms: milliseconds(timing.decode),
            queue_ms: milliseconds(timing.queue),
            infer_ms: milliseconds(timing.infer),
            total_ms: milliseconds(timing.total),
        }),
    }
}

impl ClassifyApi {
    async fn classify_one(
        classifier: &Classifier,
        metrics: &Metrics,
        request: proto::ClassifyRequest,
        timeout: Option<Duration>,
        arrived: Option<Instant>,
    ) -> Result<proto::ClassifyResponse, Status> {
        let started = Instant::now();
        let id = request.id.clone();
        let model_name = request.model.clone();
        let result = match to_service_request(request, timeout, arrived) {
            Ok(request) => classifier
                .classify(request)
                .await
                .map_err(|error| status(&error)),
            Err(status) => Err(status),
        };
        let (model, version) = match &result {
            Ok(classification) => (classification.model.clone(), classification.version.clone()),
            Err(_) => {
                let requested = Some(model_name.as_str()).filter(|name| !name.is_empty());
                match classifier.resolve(requested, None) {
                    Ok(model) => (model.name.clone(), String::new()),
                    Err(ServiceError::ModelNotFound { .. }) | Err(_) => {
                        (UNKNOWN_MODEL.to_string(), String::new())
                    }
                }
            }
        };
        let code = match &result {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        metrics
            .requests
            .with_label_values(&[model.as_str(), &version, "grpc", &code])
            .inc();
        metrics
            .request_seconds
            .with_label_values(&[model.as_str(), "grpc"])
            .observe(started.elapsed().as_secs_f64());
        result.map(|classification| to_response(id, classification))
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<proto::ClassifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClassifyService for ClassifyApi {
    async fn classify(
        &self,
        request: Request<proto::ClassifyRequest>,
    ) -> Result<Response<proto::ClassifyResponse>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let arrived = request
            .extensions()
            .get::<Arrival>()
            .map(|arrival| arrival.0);
        let response = Self::classify_one(
            &self.classifier,
            &self.metrics,
            request.into_inner(),
            timeout,
            arrived,
        )
        .await?;
        Ok(Response::new(response))
    }

    type ClassifyStreamStream = ResponseStream;

    async fn classify_stream(
        &self,
        request: Request<Streaming<proto::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let classifier = self.classifier.clone();
        let metrics = self.metrics.clone();
        let responses = request
            .into_inner()
            .map(move |message| {
                let classifier = classifier.clone();
                let metrics = metrics.clone();
                async move {
                    let message = message?;
                    let id = message.id.clone();
                    Self::classify_one(&classifier, &metrics, message, timeout, None)
                        .await
                        .map_err(|status| {
                            Status::new(
                                status.code(),
                                format!("request `{id}`: {}", status.message()),
                            )
                        })
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn list_models(
        &self,
        _request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self
            .classifier
            .list_models()
            .into_iter()
            .map(|model| proto::ModelInfo {
                name: model.name,
                versions: model
                    .versions
                    .into_iter()
                    .map(|(version, state, reason)| proto::VersionInfo {
                        version,
                        state: state.into(),
                        reason,
                    })
                    .collect(),
                input: model.input.map(|(name, shape, color)| proto::InputInfo {
                    name,
                    shape,
                    color: color.into(),
                }),
                labels: model.labels as u32,
                max_batch_size: model.max_batch_size as u32,
            })
            .collect();
        Ok(Response::new(proto::ListModelsResponse {
            default_model: self.classifier.registry().default_model().to_string(),
            models,
        }))
    }
}
