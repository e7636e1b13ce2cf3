//! Prometheus metrics, defined once with help texts and units, passed down as `Arc<Metrics>`
//! (no global registry, so tests can run servers side by side).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Batch-size buckets.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Label value for requests naming a model the server does not have (keeps labels bounded).
pub const UNKNOWN_MODEL: &str = "_unknown";

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by model, version, protocol and status code.
    pub requests: IntCounterVec,
    /// End-to-end request latency.
    pub request_seconds: HistogramVec,
    /// Decode + preprocess time per image.
    pub decode_seconds: Histogram,
    /// Time from enqueue to the start of inference.
    pub queue_seconds: HistogramVec,
    /// Inference time per batch.
    pub inference_seconds: HistogramVec,
    /// Images per batch.
    pub batch_size: HistogramVec,
    /// Images waiting in the queue.
    pub queue_depth: IntGaugeVec,
    /// Images classified.
    pub images: IntCounterVec,
    /// Requests refused or dropped, by reason.
    pub rejected: IntCounterVec,
    /// 1 when a model version is ready.
    pub model_ready: IntGaugeVec,
    /// Build information (value 1).
    pub build_info: IntGaugeVec,
    /// Requests being processed.
    pub in_flight: IntGauge,
    /// The factor admission control (`--target-p99-ms`) puts on its plans.
    pub admission_margin: GaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let latency = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
        };
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "resnet_serve_requests_total",
                    "Requests answered, by status code.",
                ),
                &["model", "version", "protocol", "code"],
            )?,
            request_seconds: HistogramVec::new(
                latency(
                    "resnet_serve_request_duration_seconds",
                    "End-to-end request latency.",
                ),
                &["model", "protocol"],
            )?,
            decode_seconds: Histogram::with_opts(latency(
                "resnet_serve_decode_duration_seconds",
                "Decode and preprocess time per image.",
            ))?,
            queue_seconds: HistogramVec::new(
                latency(
                    "resnet_serve_queue_duration_seconds",
                    "Time spent queued before inference.",
                ),
                &["model"],
            )?,
            inference_seconds: HistogramVec::new(
                latency(
                    "resnet_serve_inference_duration_seconds",
                    "Inference time per batch.",
                ),
                &["model"],
            )?,
            batch_size: HistogramVec::new(
                HistogramOpts::new("resnet_serve_batch_size", "Images per inference batch.")
                    .buckets(BATCH_BUCKETS.to_vec()),
                &["model"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "resnet_serve_queue_depth",
                    "Images waiting in the model's queue.",
                ),
                &["model"],
            )?,
            images: IntCounterVec::new(
                Opts::new("resnet_serve_images_total", "Images classified."),
                &["model"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "resnet_serve_rejected_total",
                    "Requests refused or dropped before inference, by reason.",
                ),
                &["model", "reason"],
            )?,
            model_ready: IntGaugeVec::new(
                Opts::new(
                    "resnet_serve_model_ready",
                    "1 when the model version is ready.",
                ),
                &["model", "version"],
            )?,
            build_info: IntGaugeVec::new(
                Opts::new(
                    "resnet_serve_build_info",
                    "Build information; the value is 1.",
                ),
                &["version", "ort_version", "execution_provider"],
            )?,
            in_flight: IntGauge::new(
                "resnet_serve_in_flight_requests",
                "Requests being processed.",
            )?,
            admission_margin: GaugeVec::new(
                Opts::new(
                    "resnet_serve_admission_margin",
                    "Factor on admission control's expected completion times, learnt from how \
                     late admitted requests finished (with --target-p99-ms).",
                ),
                &["model", "version"],
            )?,
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 13] = [
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_seconds.clone()),
            Box::new(metrics.decode_seconds.clone()),
            Box::new(metrics.queue_seconds.clone()),
            Box::new(metrics.inference_seconds.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.images.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.model_ready.clone()),
            Box::new(metrics.build_info.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.admission_margin.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_help_and_units() {
        let metrics = Metrics::new().unwrap();
        metrics
            .requests
            .with_label_values(&["m", "1", "http", "200"])
            .inc();
        metrics
            .queue_seconds
            .with_label_values(&["m"])
            .observe(0.001);
        let text = metrics.render();
        assert!(text.contains("# HELP resnet_serve_requests_total"));
        assert!(text.contains("resnet_serve_requests_total{code=\"200\",model=\"m\",protocol=\"http\",version=\"1\"} 1"));
        assert!(
            text.contains(
                "resnet_serve_queue_duration_seconds_bucket{model=\"m\",le=\"0.0005\"} 0"
            )
        );
        assert!(text.contains("resnet_serve_in_flight_requests 0"));
    }
}
