//! The gRPC transport: `resnet.v1.ClassifyService`, KServe V2's `inference.GRPCInferenceService`,
//! `grpc.health.v1.Health` and server reflection, served by tonic.

pub mod classify;
pub mod kserve;
pub mod status;

use std::sync::Arc;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::metrics::Metrics;
use crate::service::Classifier;

/// Generated code for `resnet.v1`.
pub mod proto {
    tonic::include_proto!("resnet.v1");
}

/// Every file descriptor, for server reflection.
pub const FILE_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Names reported by `grpc.health.v1.Health`.
pub const HEALTH_SERVICES: [&str; 3] = [
    "",
    "resnet.v1.ClassifyService",
    "inference.GRPCInferenceService",
];

/// gRPC settings.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Largest message accepted or sent.
    pub max_message_bytes: usize,
    /// `--api-key`, when set (health and reflection stay open).
    pub api_key: Option<Arc<str>>,
}

/// The gRPC services, ready to be served on their own port or beside the REST router, and
/// the health reporter the shutdown sequence flips to NOT_SERVING.
pub async fn routes(
    classifier: Arc<Classifier>,
    metrics: Arc<Metrics>,
    options: &GrpcOptions,
) -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_serving(&reporter, classifier.is_ready()).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTORS)
        .build_v1()?;
    let inference = kserve::service(classifier.clone(), metrics.clone())
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let classify = proto::classify_service_server::ClassifyServiceServer::new(
        classify::ClassifyApi::new(classifier, metrics),
    )
    .max_decoding_message_size(options.max_message_bytes)
    .max_encoding_message_size(options.max_message_bytes)
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
    .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let api_key = options.api_key.clone();
    let inference =
        tonic::service::interceptor::InterceptedService::new(inference, move |request| {
            check_api_key(api_key.as_deref(), request)
        });
    let api_key = options.api_key.clone();
    let classify = tonic::service::interceptor::InterceptedService::new(classify, move |request| {
        check_api_key(api_key.as_deref(), request)
    });
    let routes = Routes::new(health)
        .add_service(reflection)
        .add_service(classify)
        .add_service(inference);
    Ok((routes, reporter))
}

/// Marks every health service SERVING or NOT_SERVING.
pub async fn set_serving(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// With `--api-key`, requires `authorization: Bearer <key>` metadata.
pub fn check_api_key(
    key: Option<&str>,
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let Some(key) = key else {
        return Ok(request);
    };
    let given = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if crate::config::api_key_matches(given, key) {
        Ok(request)
    } else {
        Err(tonic::Status::unauthenticated(
            "missing or invalid API key (authorization: Bearer <key>)",
        ))
    }
}
