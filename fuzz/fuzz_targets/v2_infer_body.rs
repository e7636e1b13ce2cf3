//! KServe V2 REST infer bodies: JSON alone, and JSON followed by binary tensor data
//! (`Inference-Header-Content-Length`), through to the decoded input tensors.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use resnet_serve::http::v2::infer::parse_body;
use resnet_serve::http::v2::model::ModelPath;

fuzz_target!(|data: &[u8]| {
    let path = ModelPath {
        model: "model".into(),
        version: None,
    };
    let body = Bytes::copy_from_slice(data);
    let _ = parse_body(&path, None, body.clone());
    // As the binary extension: the JSON part ends at the last `}` followed by a newline-free
    // binary tail (the seeds are laid out that way), and at an arbitrary length.
    if let Some(end) = data.iter().rposition(|&byte| byte == b'}') {
        let _ = parse_body(&path, Some(end + 1), body.clone());
    }
    let _ = parse_body(&path, Some(data.len() / 2), body);
});
