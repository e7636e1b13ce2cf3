//! `/classify` bodies: JSON with base64 images, multipart with any parts, raw bytes.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use libfuzzer_sys::fuzz_target;
use resnet_serve::http::body::{BodyLimits, parse, parse_json};

/// The boundary the multipart seeds use.
const BOUNDARY: &str = "fuzzboundary";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_json(data);
    let limits = BodyLimits {
        max_bytes: 1 << 20,
        read_timeout: Duration::from_secs(10),
    };
    for content_type in [
        format!("multipart/form-data; boundary={BOUNDARY}"),
        "application/json".to_string(),
        "image/jpeg".to_string(),
    ] {
        let request = Request::builder()
            .method("POST")
            .uri("/classify")
            .header("content-type", content_type)
            .body(Body::from(data.to_vec()))
            .unwrap();
        if let Ok(parsed) = runtime().block_on(parse(request, limits)) {
            assert!(!parsed.images.is_empty());
        }
    }
});
