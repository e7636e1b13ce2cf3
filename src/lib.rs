//! resnet-serve: serves ResNet image classifiers over HTTP and gRPC on ONNX Runtime, and
//! (feature `train`) trains them and exports ONNX.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backend;
pub mod batcher;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod kserve;
pub mod listen;
pub mod metrics;
pub mod preprocess;
pub mod repository;
pub mod server;
pub mod service;
pub mod values;

#[cfg(feature = "train")]
pub mod train;
