//! KServe V2 REST errors against the real server: each bad request gets its status and the V2
//! body `{"error": "<message>"}` naming the problem, and the server keeps serving.

mod support;

use serde_json::{Value, json};
use support::{Repository, TestServer, slow_model_dir, start};

const HEADER_LENGTH: &str = "inference-header-content-length";

/// Sends `body` (with an optional header length) and returns (status, V2 error message).
async fn refused(
    server: &TestServer,
    path: &str,
    header_length: Option<usize>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = server.client.post(server.url(path)).body(body);
    if let Some(length) = header_length {
        request = request.header(HEADER_LENGTH, length.to_string());
    }
    let response = request.send().await.unwrap();
    v2_error(response).await
}

async fn v2_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a V2 error body: {body}"));
    (status, message.to_string())
}

fn fp32(shape: Value, data: Value) -> Vec<u8> {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}]})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_v2_requests_get_v2_errors() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(
        repository.path(),
        &["--max-batch-size", "4", "--max-body-bytes", "100000"],
    )
    .await;
    let infer = "/v2/models/slow/infer";
    let zeros = |n: usize| json!(vec![0.0; n]);

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("wrong shape", fp32(json!([1, 3, 28, 28]), zeros(2352)), 400, "must have shape [N, 1, 28, 28], got [1, 3, 28, 28]"),
        ("too few values", fp32(json!([1, 1, 28, 28]), zeros(10)), 400, "input has 10 values, expected 1"),
        ("not a number", fp32(json!([1, 1, 28, 28]), json!(["x"])), 400, "element 0 is \"x\", not a number"),
        ("batch over max", fp32(json!([5, 1, 28, 28]), zeros(5 * 784)), 400, "batch size 5 is outside 1..=4"),
        ("wrong dtype", json!({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [1]}]}).to_string().into_bytes(), 400, "datatype INT8"),
        ("unknown input", json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": zeros(784)}]}).to_string().into_bytes(), 400, "unknown input `pixels`"),
        ("unknown output", json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": zeros(784)}], "outputs": [{"name": "probs"}]}).to_string().into_bytes(), 400, "unknown output `probs`"),
        ("bad json", b"{\"inputs\": [".to_vec(), 400, "invalid inference request JSON"),
        ("bad priority", json!({"parameters": {"priority": 9}, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": zeros(784)}]}).to_string().into_bytes(), 400, "priority must be between 0 (default) and"),
        ("bad base64", json!({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["***"]}]}).to_string().into_bytes(), 400, "base64"),
        ("not an image", json!({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8gd29ybGQ="]}]}).to_string().into_bytes(), 415, "image 0"),
        ("bytes shape", json!({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": ["aGVsbG8="]}]}).to_string().into_bytes(), 400, "must have shape [N]"),
    ];
    for (name, body, status, needle) in cases {
        let (got, message) = refused(&server, infer, None, body).await;
        assert_eq!(got, status, "{name}: {message}");
        assert!(message.contains(needle), "{name}: {message}");
    }

    // NaN and infinity are not JSON; send them binary.
    for (value, text) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let mut tensor = vec![0.0f32; 784];
        tensor[7] = value;
        let header = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": 784 * 4}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend(tensor.iter().flat_map(|v| v.to_le_bytes()));
        let (status, message) = refused(&server, infer, Some(header.len()), body).await;
        assert_eq!(status, 400, "{message}");
        assert!(
            message.contains(&format!("input value 7 is {text}")),
            "{message}"
        );
    }

    // Binary byte counts and header lengths.
    let header = |size: usize| {
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": size}}]}).to_string()
    };
    let short = header(100);
    let mut body = short.clone().into_bytes();
    body.extend(vec![0u8; 100]);
    let (status, message) = refused(&server, infer, Some(short.len()), body).await;
    assert_eq!(
        (
            status,
            message.contains("has 100 bytes of data; FP32 shape [1, 1, 28, 28] needs 3136")
        ),
        (400, true),
        "{message}"
    );
    let missing = header(3136);
    let mut body = missing.clone().into_bytes();
    body.extend(vec![0u8; 10]);
    let (status, message) = refused(&server, infer, Some(missing.len()), body).await;
    assert_eq!(
        (
            status,
            message.contains("binary_data_size 3136 but only 10 bytes")
        ),
        (400, true),
        "{message}"
    );
    let (status, message) = refused(&server, infer, Some(5000), b"{}".to_vec()).await;
    assert_eq!(
        (
            status,
            message
                .contains("Inference-Header-Content-Length is 5000 but the body has only 2 bytes")
        ),
        (400, true),
        "{message}"
    );
    let (status, message) = refused(&server, infer, None, vec![b' '; 200_000]).await;
    assert_eq!(
        (status, message.contains("100000 bytes")),
        (413, true),
        "{message}"
    );
    let raw = [5u32.to_le_bytes().to_vec(), b"ab".to_vec()].concat();
    let bytes_header = json!({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": raw.len()}}]}).to_string();
    let mut body = bytes_header.clone().into_bytes();
    body.extend(&raw);
    let (status, message) = refused(&server, infer, Some(bytes_header.len()), body).await;
    assert_eq!(
        (status, message.contains("claims 5 bytes but only 2 remain")),
        (400, true),
        "{message}"
    );

    // Unknown models and versions, routes and methods: 404/405 with V2 bodies.
    let (status, message) = refused(
        &server,
        "/v2/models/nope/infer",
        None,
        fp32(json!([1, 1, 28, 28]), zeros(784)),
    )
    .await;
    assert_eq!(
        (status, message.contains("unknown model `nope`")),
        (404, true),
        "{message}"
    );
    let (status, message) = v2_error(
        server
            .client
            .get(server.url("/v2/models/slow/versions/7"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, message.contains("no version `7`")),
        (404, true),
        "{message}"
    );
    let (status, _) = v2_error(
        server
            .client
            .get(server.url("/v2/models/nope/ready"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, message) = v2_error(
        server
            .client
            .get(server.url("/v2/nothing/here"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, message.contains("no route")),
        (404, true),
        "{message}"
    );
    let (status, _) = v2_error(server.client.get(server.url(infer)).send().await.unwrap()).await;
    assert_eq!(status, 405);
    let (status, _) = v2_error(
        server
            .client
            .post(server.url(infer))
            .header("content-encoding", "br")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 415);

    // Still serving.
    let response = server
        .client
        .post(server.url(infer))
        .body(fp32(json!([1, 1, 28, 28]), zeros(784)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v2_except_health_and_model_control_is_refused() {
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &["--api-key", "secret"]).await;
    let get = |path: &str| server.client.get(server.url(path));
    assert_eq!(get("/v2/health/live").send().await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/ready").send().await.unwrap().status(), 200);
    let (status, message) = v2_error(get("/v2/models/slow").send().await.unwrap()).await;
    assert_eq!(
        (status, message.contains("API key")),
        (401, true),
        "{message}"
    );
    let authorized = get("/v2/models/slow")
        .bearer_auth("secret")
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 200);
    let load = server
        .client
        .post(server.url("/v2/repository/models/slow/load"))
        .bearer_auth("secret")
        .send()
        .await
        .unwrap();
    let (status, message) = v2_error(load).await;
    assert_eq!(
        (status, message.contains("model control")),
        (501, true),
        "{message}"
    );
    server.stop().await;
}
