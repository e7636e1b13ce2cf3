//! The hostile and unusual input corpus (tests/fixtures/hostile, built by
//! scripts/make_hostile_corpus.py): every case over REST, image cases over gRPC too; each gets
//! its expected status and message, no 5xx, and the server stays healthy afterwards.

mod support;

use base64::Engine as _;
use resnet_serve::grpc::proto::classify_service_client::ClassifyServiceClient;
use resnet_serve::grpc::proto::{ClassifyRequest, Image, image::Data};
use support::{Repository, root, slow_model_dir, start};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_case_gets_its_status_and_the_server_survives() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--max-body-bytes", "4000000"]).await;
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut grpc = ClassifyServiceClient::connect(format!("http://{}", server.server.grpc_address))
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
    assert_eq!(
        server
            .client
            .get(server.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}
