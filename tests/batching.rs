//! The dynamic batcher through the real server: concurrent requests share batches, a full
//! queue answers 429 with Retry-After, an expired deadline answers 504, and nothing else.

mod support;

use resnet_serve::batcher::latency::THROUGHPUT_NOISE;
use resnet_serve::grpc::kserve::proto::ModelConfigRequest;
use resnet_serve::grpc::kserve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use support::{Repository, TestServer, histogram, image, server_timing_ms, slow_model_dir, start};

/// One answer of a burst.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    /// From sending to the whole answer.
    elapsed: std::time::Duration,
}

/// `count` PNG requests at once, with `headers`.
async fn burst(server: &TestServer, count: usize, headers: &[(&str, &str)]) -> Vec<Answer> {
    let png = image("fashion-0-label9.png");
    let requests = (0..count).map(|_| {
        let mut request = server
            .client
            .post(server.url("/classify"))
            .header("content-type", "image/png")
            .body(png.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let sent = std::time::Instant::now();
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_string());
            let body = response.text().await.unwrap();
            Answer {
                status,
                retry_after,
                body,
                elapsed: sent.elapsed(),
            }
        }
    });
    futures::future::join_all(requests).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched() {
    let config = "[batching]\nmax_batch_size = 8\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    let (_, warm_count) = histogram(
        &server.metrics_text().await,
        "resnet_serve_batch_size",
        "slow",
    );
    let statuses = burst(&server, 12, &[]).await;
    assert!(
        statuses.iter().all(|answer| answer.status == 200),
        "{statuses:?}"
    );
    let (sum, count) = histogram(
        &server.metrics_text().await,
        "resnet_serve_batch_size",
        "slow",
    );
    let (batches, images) = (count - warm_count, sum);
    // While the instance runs one batch, the others queue up and run together.
    assert!(
        batches < 12.0,
        "12 requests ran in {batches} batches: not batched"
    );
    assert!(images >= 12.0, "{images}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let config = "[batching]\nmax_batch_size = 1\nmax_queue_size = 2\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    let statuses = burst(&server, 10, &[]).await;
    let ok = statuses
        .iter()
        .filter(|answer| answer.status == 200)
        .count();
    let full: Vec<_> = statuses
        .iter()
        .filter(|answer| answer.status == 429)
        .collect();
    assert_eq!(
        ok + full.len(),
        10,
        "only 200 and 429 expected: {statuses:?}"
    );
    assert!(!full.is_empty() && ok >= 3, "{statuses:?}");
    assert!(
        full.iter()
            .all(|answer| answer.retry_after.as_deref() == Some("1"))
    );
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("resnet_serve_rejected_total{model=\"slow\",reason=\"queue_full\"}"),
        "{metrics}"
    );
    // The queue drains and the server recovers at once.
    assert_eq!(burst(&server, 1, &[]).await[0].status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadlines_answer_504_before_inference() {
    let config = "[batching]\nmax_batch_size = 1\ndefault_timeout_ms = 60000\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    // Each image takes tens of milliseconds; a 5 ms deadline cannot survive the queue.
    let statuses = burst(&server, 6, &[("x-request-timeout-ms", "5")]).await;
    let timed_out = statuses
        .iter()
        .filter(|answer| answer.status == 504)
        .count();
    assert!(
        statuses
            .iter()
            .all(|answer| [200, 504].contains(&answer.status)),
        "{statuses:?}"
    );
    assert!(timed_out >= 4, "{statuses:?}");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("resnet_serve_rejected_total{model=\"slow\",reason=\"deadline\"}"),
        "{metrics}"
    );
    // Requests without a tight deadline still pass.
    assert_eq!(burst(&server, 1, &[]).await[0].status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_and_the_reported_total_count_from_the_request_s_arrival() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let repository = Repository::new().model("slow", &slow_model_dir(), None);
    let server = start(repository.path(), &[]).await;
    let png = image("fashion-0-label9.png");
    // The head and half the body, then the rest 400 ms later: a 200 ms deadline has passed
    // by the time the body is complete, so the request is not run at all.
    let send = |timeout_ms: u64| {
        let png = png.clone();
        let address = server.server.http_address;
        async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let head = format!(
                "POST /classify?model=slow HTTP/1.1\r\nhost: test\r\ncontent-type: image/png\r\n\
                 content-length: {}\r\nx-request-timeout-ms: {timeout_ms}\r\nconnection: close\r\n\r\n",
                png.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let half = png.len() / 2;
            stream.write_all(&png[..half]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            stream.write_all(&png[half..]).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    let late = send(200).await;
    assert!(late.starts_with("HTTP/1.1 504"), "{late}");
    assert!(late.contains("deadline"), "{late}");
    // The same slow upload with room to spare is served, and the total it reports counts the
    // 400 ms its body took to arrive besides its decode, queue and inference.
    let served = send(5000).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    let timing = served
        .lines()
        .find_map(|line| line.strip_prefix("server-timing: "))
        .unwrap_or_else(|| panic!("no Server-Timing in {served}"));
    let stage_ms = |stage| server_timing_ms(timing, stage);
    let receiving_ms =
        stage_ms("total") - stage_ms("decode") - stage_ms("queue") - stage_ms("infer");
    assert!(receiving_ms >= 400.0, "{timing}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_must_be_within_the_configured_levels() {
    let config = "[batching]\npriority_levels = 2\ndefault_priority = 2\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    assert_eq!(
        burst(&server, 1, &[("x-priority", "1")]).await[0].status,
        200
    );
    assert_eq!(
        burst(&server, 1, &[("x-priority", "3")]).await[0].status,
        400
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_client_left_are_dropped_before_inference() {
    let config = "[batching]\nmax_batch_size = 8\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &[]).await;
    // Eight images a request: each batch costs eight slow inferences, far longer than the
    // clients wait, however fast the machine.
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let png = image("fashion-0-label9.png");
    let requests = (0..6).map(|_| {
        let mut form = reqwest::multipart::Form::new();
        for index in 0..8 {
            let part = reqwest::multipart::Part::bytes(png.clone())
                .file_name(format!("{index}.png"))
                .mime_str("image/png")
                .unwrap();
            form = form.part(format!("image{index}"), part);
        }
        impatient
            .post(server.url("/classify"))
            .multipart(form)
            .send()
    });
    let outcomes = futures::future::join_all(requests).await;
    assert!(outcomes.iter().filter(|outcome| outcome.is_err()).count() >= 4);
    // Once the instance is free, the abandoned jobs are skipped, not run.
    assert_eq!(burst(&server, 1, &[]).await[0].status, 200);
    let metrics = server.metrics_text().await;
    let cancelled = metrics
        .lines()
        .find(|line| {
            line.starts_with("resnet_serve_rejected_total{model=\"slow\",reason=\"cancelled\"}")
        })
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse::<f64>().unwrap());
    assert!(cancelled >= 3.0, "{metrics}");
    server.stop().await;
}

/// A 28×28 white image: the `poison` fixture model fails on any batch that contains one.
fn white_png() -> Vec<u8> {
    let mut png = Vec::new();
    image::GrayImage::from_pixel(28, 28, image::Luma([255]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_only_the_request_that_fails_alone() {
    let config = "[preprocess]\nscale = 255.0\nmean = [0.0]\nstd = [1.0]\n\
                  [batching]\nmax_batch_size = 4\npreferred_batch_sizes = [4]\nmax_queue_delay_us = 500000\n";
    let poison = support::root().join("tests/fixtures/models/poison");
    let repository = Repository::new().model("poison", &poison, Some(config));
    let server = start(repository.path(), &[]).await;
    let (_, warm_count) = histogram(
        &server.metrics_text().await,
        "resnet_serve_batch_size",
        "poison",
    );
    // Three good images and a white one, sent together: one batch, which ONNX Runtime fails;
    // each request then runs alone, and only the white one fails again.
    let bodies = [
        image("fashion-0-label9.png"),
        image("fashion-2-label1.png"),
        white_png(),
        image("fashion-3-label1.png"),
    ];
    let requests = bodies.iter().enumerate().map(|(index, body)| {
        let request = server
            .client
            .post(server.url("/classify"))
            .header("content-type", "image/png")
            .header("x-request-id", format!("batch-{index}"))
            .body(body.clone());
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    let answers = futures::future::join_all(requests).await;
    let (_, count) = histogram(
        &server.metrics_text().await,
        "resnet_serve_batch_size",
        "poison",
    );
    assert_eq!(
        count - warm_count,
        1.0,
        "the four requests were not one batch"
    );
    for (index, (status, body)) in answers.iter().enumerate() {
        if index == 2 {
            assert_eq!(*status, 500, "{body}");
            assert!(
                body.contains("internal error (request id batch-2)"),
                "{body}"
            );
            assert!(!body.contains("Reshape"), "runtime details leaked: {body}");
        } else {
            assert_eq!(*status, 200, "request {index}: {body}");
            assert!(body.contains("predictions"), "{body}");
        }
    }

    // The next batch runs normally.
    let response = server
        .classify_raw("", "image/png", image("fashion-0-label9.png"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(server.get_status("/health/ready").await, 200);
    server.stop().await;
}

async fn v2_config(server: &TestServer) -> serde_json::Value {
    server
        .client
        .get(server.url("/v2/models/slow/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_p99_calibrates_the_batch_size_and_reports_it() {
    let config = "[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 5000\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    // Unreachable: one image at a time, no waiting for a fuller batch.
    let server = start(repository.path(), &["--target-p99-ms", "1"]).await;
    let reported = v2_config(&server).await;
    assert_eq!(reported["max_batch_size"], 1, "{reported}");
    assert_eq!(
        reported["dynamic_batching"]["max_queue_delay_microseconds"],
        0
    );
    // Even one image misses the target, but an idle model still serves it: only waiting is
    // refused.
    let statuses = burst(&server, 1, &[]).await;
    assert_eq!(statuses[0].status, 200, "{statuses:?}");
    server.stop().await;
    // Generous: every measured size fits, and the one with the most images/s is chosen.
    let server = start(repository.path(), &["--target-p99-ms", "600000"]).await;
    let reported = v2_config(&server).await;
    // gRPC's ModelConfig carries the same parameters.
    let mut grpc =
        GrpcInferenceServiceClient::connect(format!("http://{}", server.server.grpc_address))
            .await
            .unwrap();
    let grpc_config = grpc
        .model_config(ModelConfigRequest {
            name: "slow".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    for name in ["target_p99_ms", "batch_latency_ms"] {
        assert_eq!(
            grpc_config.parameters[name].string_value,
            reported["parameters"][name]["string_value"]
                .as_str()
                .unwrap(),
            "{name}"
        );
    }
    let chosen = reported["max_batch_size"].as_u64().unwrap() as usize;
    let measured = measured_latencies(&reported);
    let throughput = |size: usize, ms: f64| size as f64 / ms;
    let (_, chosen_ms) = *measured
        .iter()
        .find(|(size, _)| *size == chosen)
        .unwrap_or_else(|| panic!("chose {chosen}, not a measured size: {measured:?}"));
    // The fastest, or the smallest within the measurements' noise of it (the reported times
    // are rounded, hence the slack).
    for &(size, ms) in &measured {
        assert!(
            throughput(chosen, chosen_ms)
                >= throughput(size, ms) * (1.0 - THROUGHPUT_NOISE) * 0.999,
            "chose {chosen} but {size} is faster: {measured:?}"
        );
    }
    let statuses = burst(&server, 3, &[]).await;
    assert!(
        statuses.iter().all(|answer| answer.status == 200),
        "{statuses:?}"
    );
    server.stop().await;
}

/// `parameters.batch_latency_ms` of a V2 model config: `(batch size, ms)` pairs.
fn measured_latencies(config: &serde_json::Value) -> Vec<(usize, f64)> {
    config["parameters"]["batch_latency_ms"]["string_value"]
        .as_str()
        .unwrap_or_else(|| panic!("{config}"))
        .split(' ')
        .map(|point| {
            let (size, ms) = point.split_once(':').unwrap();
            (size.parse().unwrap(), ms.parse().unwrap())
        })
        .collect()
}

/// Images decoded so far, by every model (the decode histogram's count).
fn decoded(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("resnet_serve_decode_duration_seconds_count "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_admission_refuses_is_refused_before_its_image_is_decoded() {
    let config = "[batching]\nmax_batch_size = 1\nmax_queue_size = 64\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &["--target-p99-ms", "600000"]).await;
    let reported = v2_config(&server).await;
    let single_ms = measured_latencies(&reported)[0].1;
    let before = decoded(&server.metrics_text().await);
    // Six requests without a deadline keep the model busy for six batches...
    let busy = burst(&server, 6, &[]);
    let refused = async {
        // ...and once all six are decoded (so some wait in the queue), a request
        // with a deadline of one batch cannot meet it.
        let started = std::time::Instant::now();
        while decoded(&server.metrics_text().await) < before + 6 {
            assert!(
                started.elapsed().as_secs() < 30,
                "the burst was not decoded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let answer = burst(
            &server,
            1,
            &[("x-request-timeout-ms", &format!("{single_ms:.0}"))],
        )
        .await
        .remove(0);
        (answer, decoded(&server.metrics_text().await))
    };
    let (served, (answer, after)) = tokio::join!(busy, refused);
    assert!(served.iter().all(|a| a.status == 200), "{served:?}");
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(answer.body.contains("deadline_unmeetable"), "{answer:?}");
    assert_eq!(after, before + 6, "the refused request's image was decoded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_at_once_what_cannot_meet_its_deadline() {
    let config = "[batching]\nmax_batch_size = 2\nmax_queue_size = 64\n";
    let repository = Repository::new().model("slow", &slow_model_dir(), Some(config));
    let server = start(repository.path(), &["--target-p99-ms", "600000"]).await;
    // The measured batch times, as reported; a deadline of about three single-image batches
    // admits the first requests of a burst and refuses the rest.
    let reported = v2_config(&server).await;
    let single_ms = measured_latencies(&reported)
        .iter()
        .find(|(size, _)| *size == 1)
        .map(|(_, ms)| *ms)
        .unwrap_or_else(|| panic!("{reported}"));
    assert_eq!(
        reported["parameters"]["target_p99_ms"]["string_value"],
        "600000"
    );
    let deadline_ms = ((single_ms * 3.0) as u64 + 20).to_string();
    let answers = burst(
        &server,
        24,
        &[("x-request-timeout-ms", deadline_ms.as_str())],
    )
    .await;
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        answers.iter().any(|a| a.status == 200),
        "nothing was admitted: {answers:?}"
    );
    assert!(!refused.is_empty(), "nothing was refused: {answers:?}");
    let deadline = std::time::Duration::from_millis(deadline_ms.parse().unwrap());
    for Answer {
        retry_after,
        body,
        elapsed,
        ..
    } in &refused
    {
        assert!(body.contains("deadline_unmeetable"), "{body}");
        assert!(body.contains("remain to the deadline"), "{body}");
        assert!(retry_after.is_some());
        // Refused at admission, not after waiting out the deadline.
        assert!(*elapsed < deadline, "refused after {elapsed:?}");
    }
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("reason=\"deadline_unmeetable\""),
        "{metrics}"
    );
    server.stop().await;

    // Without a deadline, the latency target bounds what is admitted: a burst far past it
    // is served in part and refused in part, at once.
    let target_ms = (single_ms * 4.0) as u64 + 20;
    let server = start(
        repository.path(),
        &[
            "--target-p99-ms",
            &target_ms.to_string(),
            "--enable-model-control",
        ],
    )
    .await;
    let answers = burst(&server, 24, &[]).await;
    assert!(
        answers.iter().any(|a| a.status == 200),
        "nothing was admitted: {answers:?}"
    );
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(!refused.is_empty(), "nothing was refused: {answers:?}");
    for Answer {
        retry_after,
        body,
        elapsed,
        ..
    } in &refused
    {
        assert!(body.contains("the model's latency target"), "{body}");
        assert!(retry_after.is_some());
        assert!(
            *elapsed < std::time::Duration::from_millis(target_ms),
            "refused after {elapsed:?}"
        );
    }
    assert_eq!(
        answers.iter().filter(|a| a.status == 200).count() + refused.len(),
        24
    );
    // The margin admission plans with is exported, within its bounds.
    let metrics = server.metrics_text().await;
    let margin: f64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("resnet_serve_admission_margin{model=\"slow\",version=\"1\"} ")
        })
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!((0.5..=4.0).contains(&margin), "{margin}");
    // Reloaded, the version keeps its series (the old batcher stops, the new one serves)...
    let series = "resnet_serve_admission_margin{model=\"slow\",version=\"1\"}";
    assert_eq!(
        server.post_status("/v2/repository/models/slow/load").await,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let metrics = server.metrics_text().await;
    assert!(metrics.contains(series), "{metrics}");
    // ...and unloaded, it goes.
    assert_eq!(
        server
            .post_status("/v2/repository/models/slow/unload")
            .await,
        200
    );
    let mut metrics = server.metrics_text().await;
    for _ in 0..100 {
        if !metrics.contains("resnet_serve_admission_margin{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        metrics = server.metrics_text().await;
    }
    assert!(
        !metrics.contains("resnet_serve_admission_margin{"),
        "{metrics}"
    );
    server.stop().await;
}
