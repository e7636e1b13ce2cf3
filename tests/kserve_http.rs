//! KServe V2 over REST against the real server: metadata, configuration, statistics, JSON and
//! binary tensors, encoded images, classification, compression, and every error in V2 form.

mod support;

use std::io::{Read, Write};

use base64::Engine;
use serde_json::{Value, json};
use support::{
    Repository, TestServer, assert_inference_within_total, image, server_timing_ms, slow_model_dir,
    start,
};

const HEADER_LENGTH: &str = "inference-header-content-length";

fn repository() -> Repository {
    Repository::new().model("slow", &slow_model_dir(), None)
}

async fn server(repository: &Repository) -> TestServer {
    start(repository.path(), &["--max-batch-size", "4"]).await
}

/// The model's own preprocessing of a committed image: `1 × 28 × 28` floats.
fn tensor_of(server: &TestServer, name: &str) -> Vec<f32> {
    let model = server
        .server
        .classifier
        .resolve(Some("slow"), None)
        .unwrap();
    let limits = resnet_serve::preprocess::ImageLimits {
        max_pixels: 40_000_000,
        max_aspect_ratio: 32.0,
    };
    let mut out = vec![0.0; model.preprocess.tensor_len()];
    resnet_serve::preprocess::preprocess_encoded(
        &image(name),
        &model.preprocess,
        &limits,
        &mut out,
    )
    .unwrap();
    out
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn length_prefixed(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut raw = Vec::new();
    for element in elements {
        raw.extend((element.len() as u32).to_le_bytes());
        raw.extend(element);
    }
    raw
}

/// POSTs a JSON header plus binary data; returns (status, JSON header, binary part).
async fn post_binary(
    server: &TestServer,
    path: &str,
    header: Value,
    binary: &[u8],
) -> (u16, Value, Vec<u8>) {
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    body.extend_from_slice(binary);
    let response = server
        .client
        .post(server.url(path))
        .header(HEADER_LENGTH, length.to_string())
        .body(body)
        .send()
        .await
        .unwrap();
    split(response).await
}

async fn split(response: reqwest::Response) -> (u16, Value, Vec<u8>) {
    let status = response.status().as_u16();
    let length = response
        .headers()
        .get(HEADER_LENGTH)
        .map(|value| value.to_str().unwrap().parse::<usize>().unwrap());
    let bytes = response.bytes().await.unwrap().to_vec();
    let length = length.unwrap_or(bytes.len());
    (
        status,
        serde_json::from_slice(&bytes[..length]).unwrap(),
        bytes[length..].to_vec(),
    )
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect()
}

async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server.client.get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_health_config_index_and_statistics() {
    let repository = repository();
    let server = server(&repository).await;

    let (status, metadata) = get_json(&server, "/v2").await;
    assert_eq!(status, 200);
    assert_eq!(metadata["name"], "resnet-serve");
    let extensions = metadata["extensions"].as_array().unwrap();
    assert!(extensions.contains(&json!("binary_tensor_data")));
    assert!(
        !extensions
            .iter()
            .any(|e| e.as_str().unwrap().contains("shared_memory"))
    );
    assert_eq!(get_json(&server, "/v2/health/live").await.0, 200);
    assert_eq!(get_json(&server, "/v2/health/ready").await.0, 200);
    assert_eq!(get_json(&server, "/v2/models/slow/ready").await.0, 200);
    assert_eq!(
        get_json(&server, "/v2/models/slow/versions/1/ready")
            .await
            .0,
        200
    );

    for path in ["/v2/models/slow", "/v2/models/slow/versions/1"] {
        let (status, model) = get_json(&server, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(model["platform"], "onnxruntime_onnx");
        assert_eq!(model["versions"], json!(["1"]));
        assert_eq!(model["inputs"][0]["datatype"], "FP32");
        assert_eq!(model["inputs"][0]["shape"], json!([-1, 1, 28, 28]));
        assert_eq!(model["outputs"][0]["shape"], json!([-1, 10]));
    }

    let (status, config) = get_json(&server, "/v2/models/slow/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["max_batch_size"], 4);
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["input"][0]["dims"], json!([1, 28, 28]));
    assert_eq!(config["output"][0]["dims"], json!([10]));
    assert!(config["dynamic_batching"]["max_queue_delay_microseconds"].is_u64());
    assert_eq!(config["instance_group"][0]["kind"], "KIND_CPU");

    let index: Value = server
        .client
        .post(server.url("/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        index,
        json!([{"name": "slow", "version": "1", "state": "READY"}])
    );

    let header = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": vec![0.0; 784]}]});
    let response = server
        .client
        .post(server.url("/v2/models/slow/infer"))
        .json(&header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, stats) = get_json(&server, "/v2/models/slow/stats").await;
    assert_eq!(status, 200);
    let model = &stats["model_stats"][0];
    assert_eq!(
        (model["name"].as_str(), model["version"].as_str()),
        (Some("slow"), Some("1"))
    );
    assert!(model["inference_count"].as_u64().unwrap() >= 1);
    assert!(
        model["inference_stats"]["success"]["count"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(
        model["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    let all = get_json(&server, "/v2/models/stats").await;
    assert_eq!(all.0, 200, "{}", all.1);
    assert_eq!(all.1["model_stats"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_binary_and_encoded_images_give_the_same_logits() {
    let repository = repository();
    let server = server(&repository).await;
    let names = ["fashion-0-label9.png", "fashion-1-label2.png"];
    let tensor: Vec<f32> = names
        .iter()
        .flat_map(|name| tensor_of(&server, name))
        .collect();

    // FP32 as JSON data, logits as JSON.
    let request = json!({
        "id": "r1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 28, 28], "data": tensor}],
        "outputs": [{"name": "logits"}],
    });
    let response = server
        .client
        .post(server.url("/v2/models/slow/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert!(response.headers().get(HEADER_LENGTH).is_none());
    // The stages' times, as /classify sends them: inference is part of the total.
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    assert_inference_within_total(&timing);
    assert_eq!(server_timing_ms(&timing, "decode"), 0.0, "{timing}");
    let (status, body, _) = split(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["id"].as_str(),
            body["model_name"].as_str(),
            body["model_version"].as_str()
        ),
        (Some("r1"), Some("slow"), Some("1"))
    );
    let output = &body["outputs"][0];
    assert_eq!(
        (output["name"].as_str(), output["datatype"].as_str()),
        (Some("logits"), Some("FP32"))
    );
    assert_eq!(output["shape"], json!([2, 10]));
    let json_logits: Vec<f32> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();

    // FP32 as binary, logits binary.
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 28, 28], "parameters": {"binary_data_size": tensor.len() * 4}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
    });
    let (status, body, binary) =
        post_binary(&server, "/v2/models/slow/infer", header, &le_bytes(&tensor)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["parameters"]["binary_data_size"], 80);
    assert!(body["outputs"][0].get("data").is_none());
    assert_eq!(floats(&binary), json_logits);

    // The same images encoded, as length-prefixed BYTES with binary_data_output.
    let images: Vec<Vec<u8>> = names.iter().map(|name| image(name)).collect();
    let raw = length_prefixed(&images);
    let header = json!({
        "parameters": {"binary_data_output": true, "priority": 1, "timeout": 10_000_000},
        "inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": raw.len()}}],
    });
    let (status, body, binary) =
        post_binary(&server, "/v2/models/slow/versions/1/infer", header, &raw).await;
    assert_eq!(status, 200, "{body}");
    let image_logits = floats(&binary);
    for (a, b) in image_logits.iter().zip(&json_logits) {
        assert!((a - b).abs() < 1e-4, "{image_logits:?} vs {json_logits:?}");
    }

    // Base64 images in JSON with the classification extension.
    let encoded: Vec<String> = images
        .iter()
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        .collect();
    let request = json!({
        "inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": encoded}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    });
    let (status, body, _) = split(
        server
            .client
            .post(server.url("/v2/models/slow/infer"))
            .json(&request)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let output = &body["outputs"][0];
    assert_eq!(
        (output["datatype"].as_str(), &output["shape"]),
        (Some("BYTES"), &json!([2, 3]))
    );
    let strings: Vec<&str> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (row, classes) in strings.chunks(3).enumerate() {
        let logits = &json_logits[row * 10..row * 10 + 10];
        let mut best: Vec<usize> = (0..10).collect();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        for (rank, text) in classes.iter().enumerate() {
            let parts: Vec<&str> = text.splitn(3, ':').collect();
            let index: usize = parts[1].parse().unwrap();
            assert_eq!(index, best[rank], "{text}");
            assert!(
                (parts[0].parse::<f32>().unwrap() - logits[index]).abs() < 1e-4,
                "{text}"
            );
            assert_eq!(parts[2], support::FASHION_LABELS[index]);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_deflate_requests_and_compressed_responses() {
    let repository = repository();
    let server = server(&repository).await;
    let tensor = tensor_of(&server, "fashion-0-label9.png");
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": 784 * 4}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
    });
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    body.extend(le_bytes(&tensor));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&body).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&body).unwrap();
    let mut answers = Vec::new();
    for (encoding, compressed) in [
        ("gzip", gzip.finish().unwrap()),
        ("deflate", zlib.finish().unwrap()),
    ] {
        let response = server
            .client
            .post(server.url("/v2/models/slow/infer"))
            .header(HEADER_LENGTH, length.to_string())
            .header("content-encoding", encoding)
            .header("accept-encoding", encoding)
            .body(compressed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{encoding}");
        assert_eq!(response.headers()["content-encoding"], encoding);
        let header_length: usize = response.headers()[HEADER_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let compressed = response.bytes().await.unwrap();
        let mut plain = Vec::new();
        match encoding {
            "gzip" => flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut plain)
                .unwrap(),
            _ => flate2::read::ZlibDecoder::new(&compressed[..])
                .read_to_end(&mut plain)
                .unwrap(),
        };
        let header: Value = serde_json::from_slice(&plain[..header_length]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 40);
        answers.push(floats(&plain[header_length..]));
    }
    assert_eq!(answers[0], answers[1]);
    server.stop().await;
}
