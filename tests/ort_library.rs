//! ONNX Runtime library lookup: a missing or wrong library is a clear start-up error, never a
//! panic. (Its own test binary: the library is loaded once per process.)

mod support;

use support::{Repository, config, slow_model_dir};

#[tokio::test]
async fn a_missing_or_foreign_library_is_a_clear_error() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let missing = resnet_serve::server::start(config(
        repository.path(),
        &["--ort-lib", "/nonexistent/libonnxruntime.so"],
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        missing.contains("not found at `/nonexistent/libonnxruntime.so`")
            && missing.contains("--ort-lib"),
        "{missing}"
    );

    // A real shared library that is not ONNX Runtime.
    let foreign = std::path::Path::new(env!("RESNET_SERVE_FETCHED_ORT"))
        .with_file_name("libonnxruntime_providers_shared.so");
    let lib_dir = tempfile::tempdir().unwrap();
    let copy = lib_dir.path().join("libonnxruntime.so");
    std::fs::copy(&foreign, &copy).unwrap();
    let error = resnet_serve::backend::ort::init(&copy)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("OrtGetApiBase") && error.contains("cannot load"),
        "{error}"
    );

    // The right library still loads after those failures, with its pinned version.
    let version =
        resnet_serve::backend::ort::init(std::path::Path::new(env!("RESNET_SERVE_FETCHED_ORT")))
            .unwrap();
    assert_eq!(version, resnet_serve::backend::ort::ORT_VERSION);
}
