//! The hostile and unusual input corpus (tests/fixtures/hostile, built by
//! scripts/make_hostile_corpus.py): every case over REST, image cases also over gRPC
//! `Classify` and KServe V2 (REST binary BYTES tensor, gRPC raw BYTES tensor); each gets its
//! expected status and message, no 5xx, and the server stays healthy afterwards.

mod support;

use base64::Engine as _;
use resnet_serve::grpc::kserve::proto::ModelInferRequest;
use resnet_serve::grpc::kserve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use resnet_serve::grpc::kserve::proto::model_infer_request::InferInputTensor;
use resnet_serve::grpc::proto::classify_service_client::ClassifyServiceClient;
use resnet_serve::grpc::proto::{ClassifyRequest, Image, image::Data};
use support::{Repository, TestServer, root, slow_model_dir, start};
use tonic::Code;

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    content_type: String,
    query: String,
    send: String,
    status: u16,
    fragment: String,
}

fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/hostile/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The gRPC code DESIGN §4.2 gives for a REST status.
fn grpc_code(status: u16) -> Code {
    match status {
        200 => Code::Ok,
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        404 => Code::NotFound,
        other => panic!("no mapping for {other}"),
    }
}

/// Triton's BYTES serialisation of one element: a little-endian u32 length, then the bytes.
fn bytes_element(bytes: &[u8]) -> Vec<u8> {
    let mut element = u32::try_from(bytes.len()).unwrap().to_le_bytes().to_vec();
    element.extend_from_slice(bytes);
    element
}

/// The image as a V2 REST BYTES input with the binary tensor extension: status and body.
async fn v2_rest(server: &TestServer, bytes: &[u8]) -> (u16, String) {
    let element = bytes_element(bytes);
    let header = serde_json::json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": element.len()}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&element);
    let response = server
        .client
        .post(server.url("/v2/models/slow/infer"))
        .header("inference-header-content-length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The image as a V2 gRPC raw BYTES input: code and message.
async fn v2_grpc(
    client: &mut GrpcInferenceServiceClient<tonic::transport::Channel>,
    bytes: &[u8],
) -> (Code, String) {
    let message = ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes_element(bytes).into()],
        ..Default::default()
    };
    match client.model_infer(message).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_case_gets_its_status_and_the_server_survives() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--max-body-bytes", "4000000"]).await;
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut grpc = ClassifyServiceClient::connect(format!("http://{}", server.server.grpc_address))
        .await
        .unwrap();
    let mut v2_grpc_client =
        GrpcInferenceServiceClient::connect(format!("http://{}", server.server.grpc_address))
            .await
            .unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let bytes = std::fs::read(root().join("tests/fixtures/hostile").join(&case.file)).unwrap();
        let body = if case.send == "json" {
            serde_json::json!({"image": base64::engine::general_purpose::STANDARD.encode(&bytes)})
                .to_string()
                .into_bytes()
        } else {
            bytes.clone()
        };
        let mut request = server
            .client
            .post(server.url(&format!("/classify{}", case.query)))
            .body(body);
        if !case.content_type.is_empty() {
            request = request.header("content-type", &case.content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != case.status || !text.contains(&case.fragment) {
            failures.push(format!("REST {}: {status} {text}", case.file));
        }

        // Image payloads over gRPC (query and transport cases are REST-only).
        let image_case = case.query.is_empty()
            && case.send == "raw"
            && !case.content_type.starts_with("multipart/")
            && !case.content_type.starts_with("application/json");
        if image_case {
            // V2 carries no content type per image: cases about the HTTP content type
            // (text/plain, ...) are judged by their bytes there.
            let about_content_type = !(case.content_type.is_empty()
                || case.content_type.starts_with("image/")
                || case.content_type == "application/octet-stream");
            let fragment = if about_content_type {
                "supported format"
            } else {
                case.fragment.as_str()
            };
            let (status, text) = v2_rest(&server, &bytes).await;
            if status != case.status || !text.contains(fragment) {
                failures.push(format!("V2 REST {}: {status} {text}", case.file));
            }
            let (code, message) = v2_grpc(&mut v2_grpc_client, &bytes).await;
            if code != grpc_code(case.status) || !message.contains(fragment) {
                failures.push(format!("V2 gRPC {}: {code:?} {message}", case.file));
            }
            let message = ClassifyRequest {
                id: case.file.clone(),
                images: vec![Image {
                    data: Some(Data::Encoded(bytes)),
                }],
                ..Default::default()
            };
            let code = match grpc.classify(message).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            if code != grpc_code(case.status) {
                failures.push(format!(
                    "gRPC {}: {code:?}, expected {:?}",
                    case.file,
                    grpc_code(case.status)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let metrics = server.metrics_text().await;
    assert!(
        !metrics
            .lines()
            .any(|line| line.starts_with("resnet_serve_requests_total")
                && (line.contains("code=\"5") || line.contains("Internal"))),
        "{metrics}"
    );
    assert_eq!(server.get_status("/health/ready").await, 200);
    server.stop().await;
}
