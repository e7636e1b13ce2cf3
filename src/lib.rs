//! resnet-serve: serves ResNet image classifiers over HTTP and gRPC on ONNX Runtime, and
//! (feature `train`) trains them and exports ONNX.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod repository;

#[cfg(feature = "train")]
pub mod train;
