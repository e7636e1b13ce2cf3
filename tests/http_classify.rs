//! `POST /classify` over a real socket: every body form, several images, `top_k`, headers,
//! and the shipped default model's answers on real Fashion-MNIST test images.

mod support;

use base64::Engine as _;
use resnet_serve::http::classify::ClassifyResponse;
use support::{FASHION_LABELS, Repository, default_model_dir, fashion_items, image, start};

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn default_repository() -> Repository {
    Repository::new().model("fashion-resnet20", &default_model_dir(), None)
}

/// The first `count` Fashion-MNIST test images (Debian's dataset-fashion-mnist) as PNGs with
/// their labels.
fn fashion_test_set(count: usize) -> Vec<(Vec<u8>, usize)> {
    use std::io::Read;
    let read = |name: &str| {
        let path = std::path::Path::new("/usr/share/datasets/fashion-mnist").join(name);
        let file = std::fs::File::open(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error} (apt-get install dataset-fashion-mnist)",
                path.display()
            )
        });
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };
    let images = read("t10k-images-idx3-ubyte.gz");
    let labels = read("t10k-labels-idx1-ubyte.gz");
    (0..count)
        .map(|index| {
            let pixels = images[16 + index * 784..16 + (index + 1) * 784].to_vec();
            let mut png = Vec::new();
            image::GrayImage::from_raw(28, 28, pixels)
                .unwrap()
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            (png, usize::from(labels[8 + index]))
        })
        .collect()
}

/// The test accuracy the model card reports, in percent.
fn card_accuracy() -> f64 {
    let card = std::fs::read_to_string(default_model_dir().join("README.md")).unwrap();
    let line = card
        .lines()
        .find(|line| line.contains("Test accuracy:"))
        .expect("the card reports test accuracy");
    let number = line
        .split("Test accuracy:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    number.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_model_serves_the_accuracy_its_card_reports() {
    let repository = default_repository();
    let server = start(repository.path(), &[]).await;
    // Every label is the dataset's own name for the class index.
    for (name, _) in fashion_items() {
        let response = server.classify_raw("", "image/png", image(&name)).await;
        let body: ClassifyResponse = response.json().await.unwrap();
        assert_eq!(body.model, "fashion-resnet20");
        let top = &body.predictions.unwrap()[0];
        assert_eq!(top.label, FASHION_LABELS[top.index]);
    }
    // 1000 real test images through the server: the accuracy must match the card's (measured
    // by the trainer on all 10,000) within sampling error.
    let test_set = fashion_test_set(1000);
    let requests = test_set.iter().map(|(png, label)| {
        let request = server
            .client
            .post(server.url("/classify?top_k=1"))
            .header("content-type", "image/png")
            .body(png.clone());
        async move {
            let body: ClassifyResponse = request.send().await.unwrap().json().await.unwrap();
            body.predictions.unwrap()[0].index == *label
        }
    });
    // Sixteen at a time keeps within the queue (a burst of 1000 would rightly get 429s).
    use futures::StreamExt;
    let outcomes: Vec<bool> = futures::stream::iter(requests)
        .buffer_unordered(16)
        .collect()
        .await;
    let correct = outcomes.into_iter().filter(|correct| *correct).count();
    let accuracy = correct as f64 / test_set.len() as f64 * 100.0;
    let claimed = card_accuracy();
    // 1000 samples: one standard deviation is at most 1.6 points.
    assert!(
        accuracy >= claimed - 4.0,
        "server accuracy {accuracy:.1} % on 1000 test images, card says {claimed} %"
    );

    // The ankle boot as an upscaled RGB JPEG goes through resize and colour conversion too.
    let response = server
        .classify_raw(
            "?top_k=1",
            "image/jpeg",
            image("fashion-ankle-boot-rgb-112.jpg"),
        )
        .await;
    let body: ClassifyResponse = response.json().await.unwrap();
    assert_eq!(body.predictions.unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_form_gives_the_same_scores() {
    let repository = default_repository();
    let server = start(repository.path(), &[]).await;
    let png = image("fashion-0-label9.png");
    let other = image("fashion-1-label2.png");

    let raw: ClassifyResponse = server
        .classify_raw("", "image/png", png.clone())
        .await
        .json()
        .await
        .unwrap();
    let reference = raw.predictions.unwrap();
    assert_eq!(reference.len(), 5);
    assert!(
        reference
            .windows(2)
            .all(|pair| pair[0].score >= pair[1].score)
    );
    assert!(raw.results.is_none());

    // Content type is sniffed, not trusted.
    for content_type in ["application/octet-stream", "image/jpeg"] {
        let body: ClassifyResponse = server
            .classify_raw("", content_type, png.clone())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body.predictions.unwrap(), reference);
    }

    let json = serde_json::json!({"image": base64(&png)}).to_string();
    let body: ClassifyResponse = server
        .classify_raw("", "application/json", json.into_bytes())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body.predictions.unwrap(), reference);

    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&png)
    );
    let json = serde_json::json!({"images": [data_url, base64(&other)]}).to_string();
    let body: ClassifyResponse = server
        .classify_raw("", "application/json", json.into_bytes())
        .await
        .json()
        .await
        .unwrap();
    let results = body.results.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].predictions, reference);
    assert_eq!(results[1].predictions[0].label, "Pullover");
    assert!(body.predictions.is_none());

    // Multipart keeps part order, and even one part answers with `results`.
    let form = reqwest::multipart::Form::new()
        .part(
            "second",
            reqwest::multipart::Part::bytes(other.clone()).file_name("b.png"),
        )
        .text("note", "ignored")
        .part(
            "first",
            reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
        );
    let response = server
        .client
        .post(server.url("/classify?top_k=2"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body: ClassifyResponse = response.json().await.unwrap();
    let results = body.results.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].predictions[0].label, "Pullover");
    assert_eq!(results[1].predictions, reference[..2]);
    let form = reqwest::multipart::Form::new().part(
        "only",
        reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
    );
    let body: ClassifyResponse = server
        .client
        .post(server.url("/classify"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body.results.unwrap().len(), 1);

    // Explicit model and version; top_k up to the class count.
    let body: ClassifyResponse = server
        .classify_raw(
            "?model=fashion-resnet20&version=1&top_k=10",
            "image/png",
            png.clone(),
        )
        .await
        .json()
        .await
        .unwrap();
    let all = body.predictions.unwrap();
    assert_eq!(all.len(), 10);
    let total: f32 = all.iter().map(|prediction| prediction.score).sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_request_id_and_server_timing() {
    let repository = default_repository();
    let server = start(repository.path(), &[]).await;
    let png = image("fashion-0-label9.png");
    let response = server
        .client
        .post(server.url("/classify"))
        .header("x-request-id", "abc-123")
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    for stage in ["decode;dur=", "queue;dur=", "infer;dur=", "total;dur="] {
        assert!(timing.contains(stage), "{timing}");
    }
    let generated = server.classify_raw("?model=nope", "image/png", png).await;
    assert_eq!(generated.status(), 404);
    assert_eq!(generated.headers()["x-request-id"].len(), 36);

    let models: serde_json::Value = server
        .client
        .get(server.url("/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["default"], "fashion-resnet20");
    assert_eq!(
        models["models"][0]["input"]["shape"],
        serde_json::json!([-1, 1, 28, 28])
    );
    assert_eq!(models["models"][0]["labels"], 10);
    assert_eq!(server.get_status("/health/live").await, 200);
    assert_eq!(server.get_status("/health/ready").await, 200);
    server.stop().await;
}
