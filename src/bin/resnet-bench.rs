//! `resnet-bench`: load generator for a running resnet-serve (REST `/classify`, gRPC
//! `Classify` with encoded images; KServe V2 infer over REST or gRPC with preprocessed FP32
//! tensors), closed-loop over concurrency levels or open-loop at Poisson arrival rates, with
//! real image files; and `--baseline raw-ort`, the same model run in-process by ONNX Runtime
//! with the same threads at its best batch size, so the report gives server / raw ORT from
//! one run, and one client's p50 against raw ORT's batch-1 p50 in alternating windows.
//! Writes `report.json` and `latency.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use rand::Rng;
use resnet_serve::backend::Backend;
use resnet_serve::backend::ort::{self as ort_backend, OrtBackend, SessionOptions};
use resnet_serve::grpc::kserve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use resnet_serve::grpc::kserve::proto::model_infer_request::InferInputTensor;
use resnet_serve::grpc::kserve::proto::{ModelInferRequest, ModelMetadataRequest};
use resnet_serve::grpc::proto::classify_service_client::ClassifyServiceClient;
use resnet_serve::grpc::proto::{ClassifyRequest, Image, image::Data};
use serde::Serialize;

/// Load generator and raw-ONNX-Runtime baseline for resnet-serve.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address (host:port of REST, or of gRPC with --protocol grpc).
    #[arg(long, default_value = "127.0.0.1:8000")]
    target: String,
    /// Protocol to load.
    #[arg(long, value_enum, default_value = "rest")]
    protocol: Protocol,
    /// Model to request (default: the server's default; required with the V2 protocols).
    #[arg(long)]
    model: Option<String>,
    /// Closed loop: these numbers of clients, each sending its next request on an answer.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    concurrency: Vec<usize>,
    /// Closed loop: after a refusal (HTTP 429, gRPC RESOURCE_EXHAUSTED) a client waits this
    /// many milliseconds before its next request, as a client honouring the refusal would;
    /// 0 sends it at once (a server refusing at admission then spends its cores on refusals).
    #[arg(long, default_value = "0")]
    backoff_ms: u64,
    /// Open loop instead: Poisson arrivals at these rates (requests/s), whatever the answers.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Image files or directories of them (JPEG, PNG, ...), sent round-robin.
    #[arg(long, default_value = "tests/fixtures/images")]
    images: Vec<PathBuf>,
    /// Seconds of load before measuring, per level.
    #[arg(long, default_value = "2")]
    warmup_seconds: f64,
    /// Seconds measured, per level.
    #[arg(long, default_value = "10")]
    duration_seconds: f64,
    /// Also measure ONNX Runtime alone on this model file (`--baseline raw-ort`).
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// The ONNX file for the baseline.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Intra-op threads for the baseline (match the server's).
    #[arg(long, default_value = "2")]
    threads: usize,
    /// Deadline sent with every request (`x-request-timeout-ms` on REST, the gRPC deadline
    /// on gRPC); answers past it count as errors. Unset: the server's default.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// ONNX Runtime's CPU memory arena for the baseline (match the server's --cpu-arena).
    #[arg(long, default_value = "false", action = clap::ArgAction::Set)]
    cpu_arena: bool,
    /// The server's metrics address (host:port): each level then also reports, from the
    /// server's own counters, how busy its model instances were and how fast ONNX Runtime ran
    /// inside it, which splits server / raw ORT into pipeline and inference.
    #[arg(long)]
    metrics: Option<String>,
    /// Report directory.
    #[arg(long, default_value = "bench-report")]
    output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    /// `POST /classify` with encoded images.
    Rest,
    /// gRPC `Classify` with encoded images.
    Grpc,
    /// V2 REST infer with preprocessed FP32 tensors (binary tensor extension).
    V2Rest,
    /// V2 gRPC `ModelInfer` with preprocessed FP32 tensors (`raw_input_contents`).
    V2Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Baseline {
    RawOrt,
}

/// Results of one load level.
#[derive(Debug, Serialize)]
struct Level {
    mode: &'static str,
    /// Clients (closed loop) or offered requests/s (open loop).
    load: f64,
    requests: usize,
    throughput_per_second: f64,
    latency_ms: Percentiles,
    errors: BTreeMap<String, usize>,
    /// From the server's metrics over the measured window (with `--metrics`).
    server: Option<ServerSide>,
    /// Each answer's own stage times, from its `Server-Timing` (absent if none carried it).
    stages: Option<StageLatencies>,
}

/// What a server said one request's stages took (`Server-Timing`, or gRPC `Timing`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stages {
    decode_ms: f64,
    infer_ms: f64,
    /// The server's whole time, from the request's arrival to its answer.
    total_ms: f64,
}

impl Stages {
    /// From a `Server-Timing` value such as
    /// `decode;dur=1.2, queue;dur=0.4, infer;dur=9.8, total;dur=11.7`.
    fn parse(value: &str) -> Option<Self> {
        let stage = |name: &str| {
            value.split(',').find_map(|entry| {
                let (key, duration) = entry.trim().split_once(';')?;
                (key == name).then(|| duration.strip_prefix("dur=")?.parse::<f64>().ok())?
            })
        };
        Some(Self {
            decode_ms: stage("decode")?,
            infer_ms: stage("infer")?,
            total_ms: stage("total")?,
        })
    }
}

/// Per-request latency split by the server's own stage times: with concurrency 1 the
/// `outside_ms` part is what the server and the client cost besides decoding and inference,
/// free of how fast ONNX Runtime happens to run in the server's process.
#[derive(Debug, Serialize)]
struct StageLatencies {
    decode_ms: Percentiles,
    infer_ms: Percentiles,
    /// Latency minus decode minus inference, request by request.
    outside_ms: Percentiles,
    /// The server's own total, from the request's arrival to its answer: latency without the
    /// client's own time.
    server_total_ms: Percentiles,
}

impl StageLatencies {
    fn of(answers: &[(f64, Stages)]) -> Option<Self> {
        if answers.is_empty() {
            return None;
        }
        let series = |part: fn(&(f64, Stages)) -> f64| answers.iter().map(part).collect();
        Some(Self {
            decode_ms: Percentiles::of(series(|(_, stages)| stages.decode_ms)),
            infer_ms: Percentiles::of(series(|(_, stages)| stages.infer_ms)),
            outside_ms: Percentiles::of(series(|(latency, stages)| {
                latency - stages.decode_ms - stages.infer_ms
            })),
            server_total_ms: Percentiles::of(series(|(_, stages)| stages.total_ms)),
        })
    }
}

/// A request's outcome ("200"/"OK" or the error status) and the stage times it reported.
#[derive(Debug)]
struct Answer {
    outcome: String,
    stages: Option<Stages>,
}

impl Answer {
    fn failed(outcome: String) -> Self {
        Self {
            outcome,
            stages: None,
        }
    }
}

/// What the server's own counters say about a measured window.
#[derive(Debug, Serialize)]
struct ServerSide {
    /// Time spent in inference over the window's length, summed over instances: 1.0 means
    /// one instance never waited for work.
    inference_busy_fraction: f64,
    /// Images per second of inference time: ONNX Runtime's speed inside the server.
    inference_images_per_second: f64,
    mean_batch_size: f64,
}

/// Cumulative inference counters of every model, from a Prometheus scrape.
#[derive(Debug, Default, Clone, Copy)]
struct InferenceCounters {
    seconds: f64,
    images: f64,
    batches: f64,
}

impl InferenceCounters {
    fn parse(text: &str) -> Self {
        let mut counters = Self::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match series.split('{').next() {
                Some("resnet_serve_inference_duration_seconds_sum") => counters.seconds += value,
                Some("resnet_serve_batch_size_sum") => counters.images += value,
                Some("resnet_serve_batch_size_count") => counters.batches += value,
                _ => {}
            }
        }
        counters
    }

    async fn scrape(http: &reqwest::Client, address: &str) -> anyhow::Result<Self> {
        let text = http
            .get(format!("http://{address}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self::parse(&text))
    }
}

/// Scrapes the server's metrics at `from` and `until` and compares.
async fn watch_server(
    address: String,
    from: Instant,
    until: Instant,
) -> anyhow::Result<ServerSide> {
    let http = reqwest::Client::new();
    tokio::time::sleep_until(from.into()).await;
    let before = InferenceCounters::scrape(&http, &address).await?;
    tokio::time::sleep_until(until.into()).await;
    let after = InferenceCounters::scrape(&http, &address).await?;
    let window = until.duration_since(from).as_secs_f64();
    let (seconds, images, batches) = (
        after.seconds - before.seconds,
        after.images - before.images,
        after.batches - before.batches,
    );
    Ok(ServerSide {
        inference_busy_fraction: seconds / window,
        inference_images_per_second: if seconds > 0.0 { images / seconds } else { 0.0 },
        mean_batch_size: if batches > 0.0 { images / batches } else { 0.0 },
    })
}

#[derive(Debug, Serialize, Default)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |quantile: f64| samples[((samples.len() - 1) as f64 * quantile).round() as usize];
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct RawOrt {
    threads: usize,
    /// Images/s at each batch size.
    images_per_second_by_batch: BTreeMap<usize, f64>,
    best_batch_size: usize,
    best_images_per_second: f64,
    /// Median of the batch-1 runs.
    batch1_latency_ms: f64,
}

impl RawOrt {
    /// Images/s at the measured batch size nearest to `batch` (by ratio).
    fn images_per_second_near(&self, batch: f64) -> Option<f64> {
        let distance = |size: usize| (size as f64 / batch.max(1.0)).ln().abs();
        self.images_per_second_by_batch
            .iter()
            .min_by(|a, b| distance(*a.0).total_cmp(&distance(*b.0)))
            .map(|(_, rate)| *rate)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    target: String,
    protocol: Protocol,
    images: usize,
    levels: Vec<Level>,
    raw_ort: Option<RawOrt>,
    /// Best server throughput over raw ORT's best, same machine, same run.
    server_over_raw_ort: Option<f64>,
    /// ONNX Runtime's speed inside the server at that best level over its speed alone (with
    /// `--metrics`): below 1 when what shares the cores (requests, the load generator) slows
    /// inference itself.
    inference_in_server_over_raw_ort: Option<f64>,
    /// Best server throughput over raw ORT at the batch size the server ran there (its mean
    /// batch, with `--metrics`): what the server costs over the model at the same batching.
    server_over_raw_ort_at_server_batch: Option<f64>,
    /// Server p50 at concurrency 1 minus raw ORT's batch-1 p50, from [`Report::paired`].
    p50_overhead_at_concurrency_1_ms: Option<f64>,
    /// One client against raw ORT at batch 1, in alternating windows (with a baseline and
    /// concurrency 1 among the levels).
    paired: Option<Paired>,
    /// At concurrency 1, the p50 of each request's latency minus its own decode and inference
    /// times (from `Server-Timing`).
    p50_outside_decode_and_inference_at_concurrency_1_ms: Option<f64>,
}

/// Concurrency 1 against raw ORT at batch 1, measured side by side: [`PAIRED_ROUNDS`] rounds
/// of a window of requests from one client, then a window of raw batch-1 runs, so that a drift
/// of the machine's speed during the run (other tenants, frequency) shows in both alike. Each
/// window starts with [`PAIRED_WARMUP`] untimed requests or runs: the side that was idle
/// wakes its threads, and the other side's may still be spinning.
#[derive(Debug, Serialize)]
struct Paired {
    rounds: usize,
    requests: usize,
    /// Failed requests (not in the latencies).
    errors: usize,
    /// `None` when no request succeeded.
    server_p50_ms: Option<f64>,
    raw_ort_batch1_runs: usize,
    raw_ort_batch1_p50_ms: Option<f64>,
    /// `server_p50_ms − raw_ort_batch1_p50_ms`, when both were measured.
    p50_overhead_ms: Option<f64>,
}

/// Alternations in [`Paired`].
const PAIRED_ROUNDS: usize = 5;

/// Untimed requests or runs at the start of each window of [`Paired`].
const PAIRED_WARMUP: usize = 3;

/// Measures [`Paired`] over about `seconds`.
async fn paired_concurrency_1(
    args: &Args,
    input: Option<&Arc<TensorInput>>,
    images: &Arc<Vec<Bytes>>,
    mut baseline: RawOrtBaseline,
    seconds: f64,
) -> anyhow::Result<(RawOrtBaseline, Paired)> {
    let window = Duration::from_secs_f64(seconds / (2 * PAIRED_ROUNDS) as f64);
    let deadline = args.deadline_ms.map(Duration::from_millis);
    let mut client = Client::new(args, input).await?;
    let (mut server_ms, mut raw_ms, mut errors, mut next) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..PAIRED_ROUNDS {
        let mut sent = 0;
        let mut until = None;
        while until.is_none_or(|until| Instant::now() < until) {
            let started = Instant::now();
            let answer = client.send(&images[next % images.len()], deadline).await;
            let latency = started.elapsed().as_secs_f64() * 1000.0;
            next += 1;
            sent += 1;
            if !is_success(&answer.outcome) {
                errors += 1;
            } else if until.is_some() {
                server_ms.push(latency);
            }
            if sent == PAIRED_WARMUP {
                until = Some(Instant::now() + window);
            }
        }
        let runs;
        (baseline, runs) = tokio::task::spawn_blocking(move || {
            let runs = baseline.batch1_for(window);
            runs.map(|runs| (baseline, runs))
        })
        .await??;
        raw_ms.extend(runs);
    }
    let (requests, raw_runs) = (server_ms.len(), raw_ms.len());
    let p50 = |samples: Vec<f64>| (!samples.is_empty()).then(|| Percentiles::of(samples).p50);
    let (server, raw) = (p50(server_ms), p50(raw_ms));
    Ok((
        baseline,
        Paired {
            rounds: PAIRED_ROUNDS,
            requests,
            errors,
            server_p50_ms: server,
            raw_ort_batch1_runs: raw_runs,
            raw_ort_batch1_p50_ms: raw,
            p50_overhead_ms: server.zip(raw).map(|(server, raw)| server - raw),
        },
    ))
}

/// A client of the server under test.
#[derive(Clone)]
enum Client {
    Rest {
        http: reqwest::Client,
        url: String,
    },
    Grpc {
        grpc: ClassifyServiceClient<tonic::transport::Channel>,
        model: String,
    },
    V2Rest {
        http: reqwest::Client,
        url: String,
        input: Arc<TensorInput>,
    },
    V2Grpc {
        grpc: GrpcInferenceServiceClient<tonic::transport::Channel>,
        model: String,
        input: Arc<TensorInput>,
    },
}

/// The model input the V2 protocols send: name and `[C, H, W]`.
#[derive(Debug)]
struct TensorInput {
    name: String,
    dims: [i64; 3],
}

/// Asks the server (V2 model metadata, over the protocol under test) for the model's input
/// name and shape.
async fn tensor_input(args: &Args, model: &str) -> anyhow::Result<TensorInput> {
    let (name, shape) = if args.protocol == Protocol::V2Rest {
        let url = format!("http://{}/v2/models/{model}", args.target);
        let metadata: serde_json::Value =
            reqwest::get(&url).await?.error_for_status()?.json().await?;
        let input = &metadata["inputs"][0];
        let shape: Vec<i64> = serde_json::from_value(input["shape"].clone())?;
        (
            input["name"].as_str().unwrap_or_default().to_string(),
            shape,
        )
    } else {
        let mut grpc =
            GrpcInferenceServiceClient::connect(format!("http://{}", args.target)).await?;
        let metadata = grpc
            .model_metadata(ModelMetadataRequest {
                name: model.to_string(),
                version: String::new(),
            })
            .await?
            .into_inner();
        let input = metadata.inputs.first().context("the model has no input")?;
        (input.name.clone(), input.shape.clone())
    };
    let [_, c, h, w] = shape[..] else {
        bail!("input shape {shape:?} is not [N, C, H, W]");
    };
    Ok(TensorInput {
        name,
        dims: [c, h, w],
    })
}

/// Preprocesses `images` into little-endian FP32 tensors of `dims` (the values do not matter
/// for speed; the work the server skips does).
fn tensors(images: &[Vec<u8>], dims: [i64; 3]) -> anyhow::Result<Vec<Vec<u8>>> {
    use resnet_serve::preprocess::{ImageLimits, PreprocessSpec, preprocess_encoded};
    use resnet_serve::repository::config::{Color, Interpolation};
    let [c, h, w] = dims.map(|d| d.max(1) as u32);
    let spec = PreprocessSpec {
        color: if c == 1 { Color::Gray } else { Color::Rgb },
        resize_shorter: h.min(w) * 8 / 7,
        crop: [h, w],
        interpolation: Interpolation::Bilinear,
        scale: 255.0,
        mean: vec![0.5; c as usize],
        std: vec![0.25; c as usize],
        jpeg_dct_scaling: false,
    };
    let limits = ImageLimits {
        max_pixels: u64::MAX,
        max_aspect_ratio: f64::MAX,
    };
    images
        .iter()
        .map(|image| {
            let mut tensor = vec![0.0f32; spec.tensor_len()];
            preprocess_encoded(image, &spec, &limits, &mut tensor)?;
            Ok(tensor
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect())
        })
        .collect()
}

impl Client {
    async fn new(args: &Args, input: Option<&Arc<TensorInput>>) -> anyhow::Result<Self> {
        let model = || args.model.clone().unwrap_or_default();
        Ok(match args.protocol {
            Protocol::Rest => {
                let query = args
                    .model
                    .as_ref()
                    .map(|model| format!("?model={model}"))
                    .unwrap_or_default();
                Self::Rest {
                    http: reqwest::Client::new(),
                    url: format!("http://{}/classify{query}", args.target),
                }
            }
            Protocol::Grpc => Self::Grpc {
                grpc: ClassifyServiceClient::connect(format!("http://{}", args.target)).await?,
                model: model(),
            },
            Protocol::V2Rest => Self::V2Rest {
                http: reqwest::Client::new(),
                url: format!("http://{}/v2/models/{}/infer", args.target, model()),
                input: input.context("no model input")?.clone(),
            },
            Protocol::V2Grpc => Self::V2Grpc {
                grpc: GrpcInferenceServiceClient::connect(format!("http://{}", args.target))
                    .await?,
                model: model(),
                input: input.context("no model input")?.clone(),
            },
        })
    }

    /// Sends one image (encoded, or a tensor for V2) with an optional deadline; returns the
    /// outcome and the server's stage times.
    /// The body is shared, not copied: the load generator shares the server's cores, so what
    /// it spends per request is taken from the server.
    async fn send(&mut self, image: &Bytes, deadline: Option<Duration>) -> Answer {
        match self {
            Self::Rest { http, url } => {
                let mut request = http.post(url.as_str()).body(image.clone());
                if let Some(deadline) = deadline {
                    request = request.header("x-request-timeout-ms", deadline.as_millis() as u64);
                }
                http_outcome(request).await
            }
            Self::Grpc { grpc, model } => {
                let request = ClassifyRequest {
                    model: model.clone(),
                    images: vec![Image {
                        data: Some(Data::Encoded(image.to_vec())),
                    }],
                    ..Default::default()
                };
                match grpc.classify(with_deadline(request, deadline)).await {
                    Ok(response) => Answer {
                        outcome: "OK".into(),
                        stages: response.into_inner().timing.map(|timing| Stages {
                            decode_ms: f64::from(timing.decode_ms),
                            infer_ms: f64::from(timing.infer_ms),
                            total_ms: f64::from(timing.total_ms),
                        }),
                    },
                    Err(status) => Answer::failed(format!("{:?}", status.code())),
                }
            }
            Self::V2Rest { http, url, input } => {
                let [c, h, w] = input.dims;
                let header = serde_json::json!({
                    "inputs": [{"name": input.name, "shape": [1, c, h, w], "datatype": "FP32",
                        "parameters": {"binary_data_size": image.len()}}],
                    "parameters": match deadline {
                        Some(deadline) => serde_json::json!({"binary_data_output": true,
                            "timeout": deadline.as_micros() as u64}),
                        None => serde_json::json!({"binary_data_output": true}),
                    },
                })
                .to_string();
                let request = http
                    .post(url.as_str())
                    .header("inference-header-content-length", header.len())
                    .header("content-type", "application/octet-stream")
                    .body(reqwest::Body::wrap(Parts([
                        Bytes::from(header),
                        image.clone(),
                    ])));
                http_outcome(request).await
            }
            Self::V2Grpc { grpc, model, input } => {
                let [c, h, w] = input.dims;
                let request = ModelInferRequest {
                    model_name: model.clone(),
                    inputs: vec![InferInputTensor {
                        name: input.name.clone(),
                        datatype: "FP32".into(),
                        shape: vec![1, c, h, w],
                        ..Default::default()
                    }],
                    raw_input_contents: vec![image.clone()],
                    ..Default::default()
                };
                match grpc.model_infer(with_deadline(request, deadline)).await {
                    Ok(response) => Answer {
                        outcome: "OK".into(),
                        stages: response
                            .metadata()
                            .get("server-timing")
                            .and_then(|value| value.to_str().ok())
                            .and_then(Stages::parse),
                    },
                    Err(status) => Answer::failed(format!("{:?}", status.code())),
                }
            }
        }
    }
}

/// A request body sent as its parts, with its exact length: the V2 JSON header and then the
/// tensor, which is never copied to join them.
struct Parts<const N: usize>([Bytes; N]);

impl<const N: usize> http_body::Body for Parts<N> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.0.iter_mut().find(|part| !part.is_empty());
        std::task::Poll::Ready(next.map(|part| Ok(http_body::Frame::data(std::mem::take(part)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|part| part.len() as u64).sum())
    }
}

/// Sends an HTTP request and reads its whole answer; the status code and `Server-Timing`, or
/// the transport error.
async fn http_outcome(request: reqwest::RequestBuilder) -> Answer {
    match request.send().await {
        Ok(response) => {
            let outcome = response.status().as_u16().to_string();
            let stages = response
                .headers()
                .get("server-timing")
                .and_then(|value| value.to_str().ok())
                .and_then(Stages::parse);
            let _ = response.bytes().await;
            Answer { outcome, stages }
        }
        Err(error) => Answer::failed(format!("transport: {error}")),
    }
}

/// A gRPC request carrying `deadline` (sent as `grpc-timeout`).
fn with_deadline<T>(message: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    request
}

fn is_success(outcome: &str) -> bool {
    outcome == "200" || outcome == "OK"
}

/// The server refused the request for now (full, or it would miss its bound).
fn is_refusal(outcome: &str) -> bool {
    outcome == "429" || outcome == "ResourceExhausted"
}

fn load_images(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                files.push(entry?.path());
            }
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    let images: Vec<Vec<u8>> = files
        .iter()
        .filter(|file| {
            file.extension()
                .is_some_and(|extension| matches!(extension.to_str(), Some("jpg" | "jpeg" | "png")))
        })
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    if images.is_empty() {
        bail!("no .jpg or .png images in {paths:?}");
    }
    Ok(images)
}

type Samples = Vec<(Instant, f64, Answer)>;

/// Closed loop: `clients` tasks each send their next request when the last is answered.
async fn closed_loop(
    args: &Args,
    input: Option<&Arc<TensorInput>>,
    images: &Arc<Vec<Bytes>>,
    clients: usize,
    until: Instant,
) -> anyhow::Result<Samples> {
    let mut tasks = Vec::new();
    let deadline = args.deadline_ms.map(Duration::from_millis);
    let backoff = Duration::from_millis(args.backoff_ms);
    for index in 0..clients {
        let mut client = Client::new(args, input).await?;
        let images = images.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut next = index;
            while Instant::now() < until {
                let image = &images[next % images.len()];
                next += clients;
                let started = Instant::now();
                let outcome = client.send(image, deadline).await;
                let refused = is_refusal(&outcome.outcome);
                samples.push((started, started.elapsed().as_secs_f64() * 1000.0, outcome));
                if refused && !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    Ok(samples)
}

/// Open loop: requests start at exponential intervals (Poisson arrivals at `rate`/s), whether
/// or not earlier ones were answered, so queueing shows.
async fn open_loop(
    args: &Args,
    input: Option<&Arc<TensorInput>>,
    images: &Arc<Vec<Bytes>>,
    rate: f64,
    until: Instant,
) -> anyhow::Result<Samples> {
    // Both clients multiplex over pooled connections, so clones share them.
    let client = Client::new(args, input).await?;
    let deadline = args.deadline_ms.map(Duration::from_millis);
    let mut tasks = Vec::new();
    let mut next_start = Instant::now();
    let mut random = rand::rng();
    let mut index = 0;
    while next_start < until {
        tokio::time::sleep_until(next_start.into()).await;
        let image = images[index % images.len()].clone();
        index += 1;
        let mut client = client.clone();
        let scheduled = next_start;
        tasks.push(tokio::spawn(async move {
            let outcome = client.send(&image, deadline).await;
            // From the scheduled start: time a request waits in the client counts too.
            (
                scheduled,
                scheduled.elapsed().as_secs_f64() * 1000.0,
                outcome,
            )
        }));
        let gap = -random.random::<f64>().max(1e-12).ln() / rate;
        next_start += Duration::from_secs_f64(gap);
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await?);
    }
    Ok(samples)
}

fn summarise(
    mode: &'static str,
    load: f64,
    samples: Samples,
    measure_from: Instant,
    seconds: f64,
) -> Level {
    let measured: Vec<_> = samples
        .into_iter()
        .filter(|(started, ..)| *started >= measure_from)
        .collect();
    let mut errors = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut staged = Vec::new();
    for (_, latency, answer) in &measured {
        if is_success(&answer.outcome) {
            latencies.push(*latency);
            staged.extend(answer.stages.map(|stages| (*latency, stages)));
        } else {
            *errors.entry(answer.outcome.clone()).or_insert(0) += 1;
        }
    }
    Level {
        mode,
        load,
        requests: measured.len(),
        throughput_per_second: latencies.len() as f64 / seconds,
        latency_ms: Percentiles::of(latencies),
        errors,
        server: None,
        stages: StageLatencies::of(&staged),
    }
}

/// Batch sizes the raw-ORT baseline measures.
const RAW_SIZES: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// Rounds over every size in each half of the baseline.
const RAW_ROUNDS: usize = 2;

/// ONNX Runtime alone, in this process, at batch sizes 1..=32: images/s and batch-1 latency.
/// Measured in interleaved rounds (a drift of the machine's speed, from other tenants or
/// frequency, spreads over all sizes instead of favouring one), half before the server is
/// loaded and half after (so drift spreads over server and baseline alike); each size's rate is
/// over all its rounds, since the best of six short rates is biased upwards by their noise.
struct RawOrtBaseline {
    backend: OrtBackend,
    threads: usize,
    tensors: Vec<Vec<f32>>,
    /// Images and time, by `RAW_SIZES` index.
    totals: [(usize, Duration); RAW_SIZES.len()],
    batch1_runs_ms: Vec<f64>,
}

impl RawOrtBaseline {
    /// Builds the session (same options as the server's, spinning on) and runs each size once.
    fn open(onnx: &Path, threads: usize, cpu_arena: bool) -> anyhow::Result<Self> {
        ort_backend::init(&ort_backend::library_path(None))?;
        let options = SessionOptions {
            device: resnet_serve::backend::Device::Cpu,
            allow_cpu_fallback: false,
            intra_op_threads: threads,
            cpu_arena,
            // ONNX Runtime's default, and its fastest when nothing else shares the cores.
            intra_op_spinning: true,
        };
        let (session, signature, device) = ort_backend::open(onnx, &options)?;
        let input = signature.inputs.first().context("model has no input")?;
        let output = signature.outputs.first().context("model has no output")?;
        let dims: Vec<usize> = input
            .shape
            .iter()
            .skip(1)
            .map(|&d| d.max(1) as usize)
            .collect();
        let per_image: usize = dims.iter().product();
        let mut backend = OrtBackend::new(
            session,
            input.name.clone(),
            output.name.clone(),
            dims,
            device,
        );
        let tensors: Vec<Vec<f32>> = RAW_SIZES
            .iter()
            .map(|&batch| vec![0.1f32; batch * per_image])
            .collect();
        for (&batch, tensor) in RAW_SIZES.iter().zip(&tensors) {
            backend.infer(tensor, batch)?;
        }
        Ok(Self {
            backend,
            threads,
            tensors,
            totals: [(0, Duration::ZERO); RAW_SIZES.len()],
            batch1_runs_ms: Vec::new(),
        })
    }

    /// Measures for about `seconds`, in [`RAW_ROUNDS`] rounds over every size.
    fn measure(&mut self, seconds: f64) -> anyhow::Result<()> {
        let slot = Duration::from_secs_f64(seconds / (RAW_SIZES.len() * RAW_ROUNDS) as f64);
        for _ in 0..RAW_ROUNDS {
            for ((&batch, tensor), total) in
                RAW_SIZES.iter().zip(&self.tensors).zip(&mut self.totals)
            {
                let started = Instant::now();
                let mut runs = 0usize;
                while started.elapsed() < slot || runs < 2 {
                    let run_started = Instant::now();
                    self.backend.infer(tensor, batch)?;
                    if batch == 1 {
                        self.batch1_runs_ms
                            .push(run_started.elapsed().as_secs_f64() * 1000.0);
                    }
                    runs += 1;
                }
                total.0 += runs * batch;
                total.1 += started.elapsed();
            }
        }
        Ok(())
    }

    /// [`PAIRED_WARMUP`] untimed batch-1 runs, then timed ones for `window` (at least one):
    /// each one's milliseconds.
    fn batch1_for(&mut self, window: Duration) -> anyhow::Result<Vec<f64>> {
        for _ in 0..PAIRED_WARMUP {
            self.backend.infer(&self.tensors[0], 1)?;
        }
        let started = Instant::now();
        let mut runs = Vec::new();
        while started.elapsed() < window || runs.is_empty() {
            let run_started = Instant::now();
            self.backend.infer(&self.tensors[0], 1)?;
            runs.push(run_started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(runs)
    }

    /// What was measured.
    fn report(self) -> RawOrt {
        let by_batch: BTreeMap<usize, f64> = RAW_SIZES
            .iter()
            .zip(self.totals)
            .map(|(&batch, (images, elapsed))| {
                (batch, images as f64 / elapsed.as_secs_f64().max(1e-9))
            })
            .collect();
        let (best_batch_size, best_images_per_second) = by_batch
            .iter()
            .map(|(batch, rate)| (*batch, *rate))
            .fold(
                (1, 0.0),
                |best, item| if item.1 > best.1 { item } else { best },
            );
        RawOrt {
            threads: self.threads,
            images_per_second_by_batch: by_batch,
            best_batch_size,
            best_images_per_second,
            batch1_latency_ms: Percentiles::of(self.batch1_runs_ms).p50,
        }
    }
}

/// Runs `measure` on `baseline` off the async workers.
async fn measure_raw(mut baseline: RawOrtBaseline, seconds: f64) -> anyhow::Result<RawOrtBaseline> {
    tokio::task::spawn_blocking(move || {
        baseline.measure(seconds)?;
        Ok(baseline)
    })
    .await?
}

fn plot(levels: &[Level], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = levels
        .iter()
        .map(|level| level.throughput_per_second)
        .fold(1.0, f64::max)
        * 1.1;
    let max_y = levels
        .iter()
        .map(|level| level.latency_ms.p99)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency vs throughput", ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("requests/s")
        .y_desc("latency (ms)")
        .draw()?;
    for (name, color, pick) in [
        (
            "p50",
            BLUE,
            (|p: &Percentiles| p.p50) as fn(&Percentiles) -> f64,
        ),
        ("p90", GREEN, |p: &Percentiles| p.p90),
        ("p99", RED, |p: &Percentiles| p.p99),
    ] {
        let points: Vec<(f64, f64)> = levels
            .iter()
            .map(|level| (level.throughput_per_second, pick(&level.latency_ms)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 3, color.filled())),
        )?;
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut images = load_images(&args.images)?;
    let input = match args.protocol {
        Protocol::V2Rest | Protocol::V2Grpc => {
            let model = args
                .model
                .as_deref()
                .context("the V2 protocols need --model")?;
            let input = tensor_input(&args, model).await?;
            images = tensors(&images, input.dims)?;
            Some(Arc::new(input))
        }
        Protocol::Rest | Protocol::Grpc => None,
    };
    let images: Arc<Vec<Bytes>> = Arc::new(images.into_iter().map(Bytes::from).collect());
    let raw_baseline = match (args.baseline, &args.onnx) {
        (Some(Baseline::RawOrt), Some(onnx)) => {
            let (onnx, threads, arena) = (onnx.clone(), args.threads, args.cpu_arena);
            let baseline =
                tokio::task::spawn_blocking(move || RawOrtBaseline::open(&onnx, threads, arena))
                    .await??;
            Some(measure_raw(baseline, args.duration_seconds / 2.0).await?)
        }
        (Some(Baseline::RawOrt), None) => bail!("--baseline raw-ort needs --onnx MODEL_FILE"),
        (None, _) => None,
    };
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let duration = Duration::from_secs_f64(args.duration_seconds);
    let mut levels = Vec::new();
    let plan: Vec<(&'static str, f64)> = if args.rate.is_empty() {
        args.concurrency
            .iter()
            .map(|&clients| ("closed", clients as f64))
            .collect()
    } else {
        args.rate.iter().map(|&rate| ("open", rate)).collect()
    };
    for (mode, load) in plan {
        let measure_from = Instant::now() + warmup;
        let until = measure_from + duration;
        let watch = args
            .metrics
            .clone()
            .map(|address| tokio::spawn(watch_server(address, measure_from, until)));
        let samples = match mode {
            "closed" => closed_loop(&args, input.as_ref(), &images, load as usize, until).await?,
            _ => open_loop(&args, input.as_ref(), &images, load, until).await?,
        };
        let mut level = summarise(mode, load, samples, measure_from, duration.as_secs_f64());
        if let Some(watch) = watch {
            level.server = Some(watch.await??);
        }
        eprintln!(
            "{mode} {load}: {:.1} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {:?}{}{}",
            level.throughput_per_second,
            level.latency_ms.p50,
            level.latency_ms.p99,
            level.errors,
            level
                .server
                .as_ref()
                .map_or(String::new(), |server| format!(
                    "; server: busy {:.3}, inference {:.1} images/s, mean batch {:.2}",
                    server.inference_busy_fraction,
                    server.inference_images_per_second,
                    server.mean_batch_size
                )),
            level
                .stages
                .as_ref()
                .map_or(String::new(), |stages| format!(
                    "; p50 decode {:.2} ms, inference {:.2} ms, outside both {:.2} ms",
                    stages.decode_ms.p50, stages.infer_ms.p50, stages.outside_ms.p50
                ))
        );
        levels.push(level);
    }
    let concurrency_1 = levels
        .iter()
        .find(|level| level.mode == "closed" && level.load == 1.0);
    let (raw_baseline, paired) = match raw_baseline {
        Some(baseline) if concurrency_1.is_some() => {
            let (baseline, paired) = paired_concurrency_1(
                &args,
                input.as_ref(),
                &images,
                baseline,
                args.duration_seconds,
            )
            .await?;
            match (paired.server_p50_ms, paired.raw_ort_batch1_p50_ms) {
                (Some(server), Some(raw)) => eprintln!(
                    "concurrency 1 against raw ORT batch 1, alternating: p50 {server:.2} − \
                     {raw:.2} = {:.2} ms",
                    server - raw
                ),
                _ => eprintln!(
                    "concurrency 1 against raw ORT batch 1: nothing measured ({} errors)",
                    paired.errors
                ),
            }
            (Some(baseline), Some(paired))
        }
        baseline => (baseline, None),
    };
    let raw_ort = match raw_baseline {
        Some(baseline) => {
            let raw = measure_raw(baseline, args.duration_seconds / 2.0)
                .await?
                .report();
            eprintln!(
                "raw ORT: best {:.1} images/s at batch {}, batch-1 {:.2} ms",
                raw.best_images_per_second, raw.best_batch_size, raw.batch1_latency_ms
            );
            Some(raw)
        }
        None => None,
    };
    let best = levels
        .iter()
        .max_by(|a, b| a.throughput_per_second.total_cmp(&b.throughput_per_second));
    let server_over_raw_ort = raw_ort
        .as_ref()
        .zip(best)
        .map(|(raw, best)| best.throughput_per_second / raw.best_images_per_second);
    let inference_in_server_over_raw_ort = raw_ort
        .as_ref()
        .zip(best.and_then(|best| best.server.as_ref()))
        .map(|(raw, server)| server.inference_images_per_second / raw.best_images_per_second);
    let server_over_raw_ort_at_server_batch = raw_ort.as_ref().zip(best).and_then(|(raw, best)| {
        let server = best.server.as_ref()?;
        Some(best.throughput_per_second / raw.images_per_second_near(server.mean_batch_size)?)
    });
    let p50_overhead = paired.as_ref().and_then(|paired| paired.p50_overhead_ms);
    let p50_outside = concurrency_1.and_then(|level| Some(level.stages.as_ref()?.outside_ms.p50));
    let report = Report {
        target: args.target.clone(),
        protocol: args.protocol,
        images: images.len(),
        levels,
        raw_ort,
        server_over_raw_ort,
        inference_in_server_over_raw_ort,
        server_over_raw_ort_at_server_batch,
        p50_overhead_at_concurrency_1_ms: p50_overhead,
        paired,
        p50_outside_decode_and_inference_at_concurrency_1_ms: p50_outside,
    };
    std::fs::create_dir_all(&args.output)?;
    std::fs::write(
        args.output.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    plot(&report.levels, &args.output.join("latency.svg"))?;
    if let Some(ratio) = report.server_over_raw_ort {
        eprintln!("server / raw ORT throughput: {ratio:.3}");
    }
    if let Some(ratio) = report.inference_in_server_over_raw_ort {
        eprintln!("inference inside the server / raw ORT: {ratio:.3}");
    }
    if let Some(ratio) = report.server_over_raw_ort_at_server_batch {
        eprintln!("server / raw ORT at the server's batch size: {ratio:.3}");
    }
    eprintln!("report: {}", args.output.join("report.json").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_in_parts_sends_each_part_in_order_with_its_exact_length() {
        use http_body::Body as _;
        let mut body = Parts([
            Bytes::from_static(b"{}"),
            Bytes::new(),
            Bytes::from(vec![7u8; 9]),
        ]);
        assert_eq!(body.size_hint().exact(), Some(11));
        let mut sent = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|context| std::pin::Pin::new(&mut body).poll_frame(context)).await
        {
            sent.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(sent, [&b"{}"[..], &[7u8; 9][..]]);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn stages_come_from_server_timing_in_any_order() {
        let stages = Stages::parse("queue;dur=0.4, infer;dur=9.75,decode;dur=1.2, total;dur=11.9");
        assert_eq!(
            stages,
            Some(Stages {
                decode_ms: 1.2,
                infer_ms: 9.75,
                total_ms: 11.9
            })
        );
        // A stage missing, or a duration that is not a number, gives nothing.
        assert_eq!(Stages::parse("decode;dur=1.2, total;dur=2"), None);
        assert_eq!(Stages::parse("decode;dur=1.2, infer;dur=2"), None);
        assert_eq!(
            Stages::parse("decode;dur=x, infer;dur=1, total;dur=2"),
            None
        );
        // A name that only starts like a stage is not that stage.
        assert_eq!(
            Stages::parse("decoder;dur=1, infer;dur=1, total;dur=2"),
            None
        );
    }

    #[test]
    fn outside_time_is_latency_less_decode_and_inference_per_request() {
        let stage = |decode_ms, infer_ms| Stages {
            decode_ms,
            infer_ms,
            total_ms: decode_ms + infer_ms + 0.5,
        };
        let answers = [
            (12.0, stage(1.0, 10.0)),
            (33.0, stage(2.0, 30.0)),
            (25.0, stage(0.0, 21.0)),
        ];
        let split = StageLatencies::of(&answers).unwrap();
        assert_eq!(split.outside_ms.p50, 1.0);
        assert_eq!(split.outside_ms.max, 4.0);
        assert_eq!(split.infer_ms.p50, 21.0);
        assert_eq!(split.server_total_ms.p50, 21.5);
        assert!(StageLatencies::of(&[]).is_none());
    }

    #[test]
    fn inference_counters_add_up_every_model_and_skip_the_rest() {
        let text = "\
# HELP resnet_serve_batch_size Images per batch.
resnet_serve_batch_size_bucket{model=\"a\",le=\"1\"} 1
resnet_serve_batch_size_sum{model=\"a\"} 12
resnet_serve_batch_size_sum{model=\"b\"} 4
resnet_serve_batch_size_count{model=\"a\"} 3
resnet_serve_batch_size_count{model=\"b\"} 1
resnet_serve_inference_duration_seconds_sum{model=\"a\"} 1.5
resnet_serve_inference_duration_seconds_sum{model=\"b\"} 0.5
resnet_serve_inference_duration_seconds_count{model=\"a\"} 3
resnet_serve_queue_duration_seconds_sum{model=\"a\"} 9
";
        let counters = InferenceCounters::parse(text);
        assert_eq!(counters.seconds, 2.0);
        assert_eq!(counters.images, 16.0);
        assert_eq!(counters.batches, 4.0);
    }

    #[test]
    fn the_raw_rate_compared_is_at_the_nearest_measured_batch_size() {
        let raw = RawOrt {
            threads: 2,
            images_per_second_by_batch: BTreeMap::from([
                (1, 10.0),
                (2, 12.0),
                (4, 13.0),
                (8, 11.0),
            ]),
            best_batch_size: 4,
            best_images_per_second: 13.0,
            batch1_latency_ms: 100.0,
        };
        assert_eq!(raw.images_per_second_near(1.0), Some(10.0));
        assert_eq!(raw.images_per_second_near(2.4), Some(12.0));
        assert_eq!(raw.images_per_second_near(3.1), Some(13.0));
        assert_eq!(raw.images_per_second_near(40.0), Some(11.0));
        // A server that reports no batches compares with batch 1.
        assert_eq!(raw.images_per_second_near(0.0), Some(10.0));
    }
}
