//! KServe V2 over gRPC: Triton's `inference.GRPCInferenceService` on the shared V2 logic in
//! `crate::kserve`. Errors map through `status::status`; shared memory, tracing and logging
//! settings answer UNIMPLEMENTED, and so do model load/unload without `--enable-model-control`.

pub mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::status::{grpc_timeout, status};
use crate::kserve::{self, EXTENSIONS, SERVER_NAME, model as v2};
use crate::listen::Arrival;
use crate::metrics::Metrics;
use crate::service::{Classifier, Timing};

/// Generated code for Triton's `inference` package.
#[allow(clippy::all, missing_docs, reason = "generated code")]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::*;

/// Requests of one `ModelStreamInfer` stream in flight at once (answers stay in order).
const STREAM_CONCURRENCY: usize = 8;

/// The `inference.GRPCInferenceService` implementation.
pub struct KserveApi {
    classifier: Arc<Classifier>,
    metrics: Arc<Metrics>,
}

/// The service, ready to add to the tonic routes (gzip accepted and sent when asked).
pub fn service(
    classifier: Arc<Classifier>,
    metrics: Arc<Metrics>,
) -> GrpcInferenceServiceServer<KserveApi> {
    GrpcInferenceServiceServer::new(KserveApi {
        classifier,
        metrics,
    })
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
    .send_compressed(tonic::codec::CompressionEncoding::Gzip)
}

/// Runs one inference request and counts it under protocol `v2-grpc`.
async fn infer_one(
    classifier: &Classifier,
    metrics: &Metrics,
    message: ModelInferRequest,
    deadline: Option<std::time::Duration>,
    arrived: Option<Instant>,
) -> Result<(ModelInferResponse, Timing), Status> {
    let started = Instant::now();
    let model_name = message.model_name.clone();
    let result = match convert::request(message, deadline) {
        Ok(mut converted) => {
            converted.request.options.arrived = arrived;
            kserve::infer(classifier, converted.request)
                .await
                .map(|response| {
                    let timing = response.timing;
                    (
                        convert::response(response, converted.id, converted.raw),
                        timing,
                    )
                })
                .map_err(|error| status(&error))
        }
        Err(error) => Err(status(&error)),
    };
    let (model, version, code) = match &result {
        Ok((response, _)) => (
            response.model_name.clone(),
            response.model_version.clone(),
            "OK".to_string(),
        ),
        Err(status) => (
            kserve::metric_model(classifier, &model_name),
            String::new(),
            format!("{:?}", status.code()),
        ),
    };
    metrics
        .requests
        .with_label_values(&[model.as_str(), &version, "v2-grpc", &code])
        .inc();
    metrics
        .request_seconds
        .with_label_values(&[model.as_str(), "v2-grpc"])
        .observe(started.elapsed().as_secs_f64());
    result
}

fn version(version: &str) -> Option<&str> {
    Some(version).filter(|version| !version.is_empty())
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not supported by resnet-serve; send tensors in the request"
    )))
}

type StreamInferStream =
    Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for KserveApi {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.classifier.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = v2::ready(&self.classifier, &request.name, version(&request.version))
            .map_err(|error| status(&error))?;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.map(String::from).to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let metadata = v2::metadata(&self.classifier, &request.name, version(&request.version))
            .map_err(|error| status(&error))?;
        let tensors = |tensors: Vec<v2::TensorMetadata>| {
            tensors
                .into_iter()
                .map(|tensor| model_metadata_response::TensorMetadata {
                    name: tensor.name,
                    datatype: tensor.datatype.into(),
                    shape: tensor.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: metadata.platform.into(),
            inputs: tensors(metadata.inputs),
            outputs: tensors(metadata.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let arrived = request
            .extensions()
            .get::<Arrival>()
            .map(|arrival| arrival.0);
        infer_one(
            &self.classifier,
            &self.metrics,
            request.into_inner(),
            deadline,
            arrived,
        )
        .await
        .map(|(message, timing)| {
            let mut response = Response::new(message);
            // As REST: the stages' times, for clients and load generators that split latency.
            if let Ok(value) = timing.server_timing().parse() {
                response.metadata_mut().insert("server-timing", value);
            }
            response
        })
    }

    type ModelStreamInferStream = StreamInferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let classifier = self.classifier.clone();
        let metrics = self.metrics.clone();
        let answers = request
            .into_inner()
            .map(move |message| {
                let (classifier, metrics) = (classifier.clone(), metrics.clone());
                async move {
                    let message = message?;
                    let id = message.id.clone();
                    // As Triton: a failed request is reported in-band and the stream goes on.
                    Ok(
                        match infer_one(&classifier, &metrics, message, None, None).await {
                            Ok((response, _)) => ModelStreamInferResponse {
                                error_message: String::new(),
                                infer_response: Some(response),
                            },
                            Err(status) => ModelStreamInferResponse {
                                error_message: status.message().to_string(),
                                infer_response: Some(ModelInferResponse {
                                    id,
                                    ..ModelInferResponse::default()
                                }),
                            },
                        },
                    )
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let model = v2::config(&self.classifier, &request.name, version(&request.version))
            .map_err(|error| status(&error))?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(convert::model_config(&model)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let name = Some(request.name.as_str()).filter(|name| !name.is_empty());
        let stats = v2::statistics(
            &self.classifier,
            &self.metrics,
            name,
            version(&request.version),
        )
        .map_err(|error| status(&error))?;
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: stats.into_iter().map(convert::statistics).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let models = v2::index(&self.classifier, request.into_inner().ready)
            .into_iter()
            .map(|entry| repository_index_response::ModelIndex {
                name: entry.name,
                version: entry.version,
                state: entry.state.into(),
                reason: entry.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let registry = self.classifier.registry();
        if !registry.model_control() {
            return Err(model_control_disabled());
        }
        registry
            .load_model(&request.into_inner().model_name)
            .await
            .map_err(|error| status(&error))?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let registry = self.classifier.registry();
        if !registry.model_control() {
            return Err(model_control_disabled());
        }
        registry
            .unload_model(&request.into_inner().model_name)
            .await
            .map_err(|error| status(&error))?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _request: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        unimplemented("system shared memory")
    }

    async fn system_shared_memory_register(
        &self,
        _request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        unimplemented("system shared memory")
    }

    async fn system_shared_memory_unregister(
        &self,
        _request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        unimplemented("system shared memory")
    }

    async fn cuda_shared_memory_status(
        &self,
        _request: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        unimplemented("CUDA shared memory")
    }

    async fn cuda_shared_memory_register(
        &self,
        _request: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        unimplemented("CUDA shared memory")
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _request: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        unimplemented("CUDA shared memory")
    }

    async fn trace_setting(
        &self,
        _request: Request<TraceSettingRequest>,
    ) -> Result<Response<TraceSettingResponse>, Status> {
        Err(Status::unimplemented("trace settings are not supported"))
    }

    async fn log_settings(
        &self,
        _request: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        Err(Status::unimplemented(
            "log settings are not supported; use RUST_LOG",
        ))
    }
}

/// Load and unload need `--enable-model-control`.
fn model_control_disabled() -> Status {
    Status::unimplemented(
        "model control is off; start the server with --enable-model-control to load and unload models",
    )
}
