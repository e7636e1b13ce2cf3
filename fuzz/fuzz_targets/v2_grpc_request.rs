//! KServe V2 gRPC: a `ModelInferRequest` decoded from arbitrary bytes, then converted (typed
//! contents, raw contents, parameters) as the server does.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use resnet_serve::grpc::kserve::convert;
use resnet_serve::grpc::kserve::proto::ModelInferRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ModelInferRequest::decode(data) {
        let _ = convert::request(message.clone(), None);
        let _ = convert::request(message, Some(Duration::from_millis(5)));
    }
});
