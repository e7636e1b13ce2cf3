//! The server's configuration: one clap struct, every flag with a `RESNET_SERVE_*` variable,
//! validated once before anything binds.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

use crate::backend::Device;
use crate::preprocess::ImageLimits;
use crate::repository::spec::ServerDefaults;

/// resnet-serve: serve ResNet image classifiers over HTTP and gRPC on ONNX Runtime.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct ServeConfig {
    /// Model repository: one directory per model (config.toml, labels.txt, N/model.onnx).
    #[arg(long, env = "RESNET_SERVE_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,

    /// Model used when a request names none [default: the only model, or the one whose
    /// config.toml says `default = true`].
    #[arg(long, env = "RESNET_SERVE_DEFAULT_MODEL")]
    pub default_model: Option<String>,

    #[command(flatten)]
    pub network: NetworkConfig,

    #[command(flatten)]
    pub runtime: RuntimeConfig,

    #[command(flatten)]
    pub batching: BatchingConfig,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub lifecycle: LifecycleConfig,

    /// Log format.
    #[arg(
        long,
        env = "RESNET_SERVE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Listeners.
#[derive(Debug, Clone, Args)]
pub struct NetworkConfig {
    /// Address to listen on.
    #[arg(long, env = "RESNET_SERVE_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// REST port (0 = any free port).
    #[arg(long, env = "RESNET_SERVE_HTTP_PORT", default_value = "8000")]
    pub http_port: u16,

    /// gRPC port.
    #[arg(long, env = "RESNET_SERVE_GRPC_PORT", default_value = "8001")]
    pub grpc_port: u16,

    /// Prometheus metrics port.
    #[arg(long, env = "RESNET_SERVE_METRICS_PORT", default_value = "8002")]
    pub metrics_port: u16,

    /// Serve REST and gRPC on the HTTP port, routed by content type (also implied by
    /// --grpc-port equal to --http-port). KServe on Knative allows one container port.
    #[arg(long, env = "RESNET_SERVE_SINGLE_PORT")]
    pub single_port: bool,

    /// Do not serve the web page at `/`.
    #[arg(long, env = "RESNET_SERVE_NO_WEB_UI")]
    pub no_web_ui: bool,

    /// Origins allowed to call the REST API from browsers (comma-separated; `*` = any).
    /// Off by default.
    #[arg(long, env = "RESNET_SERVE_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(
        long,
        env = "RESNET_SERVE_GRPC_MAX_MESSAGE_BYTES",
        default_value = "67108864"
    )]
    pub grpc_max_message_bytes: usize,

    /// PEM certificate chain: serve REST and gRPC over TLS (with --tls-key). Metrics stay
    /// plain text.
    #[arg(long, env = "RESNET_SERVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "RESNET_SERVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// ONNX Runtime.
#[derive(Debug, Clone, Args)]
pub struct RuntimeConfig {
    /// Execution provider: cpu, cuda or cuda:N (a model's config.toml may override it).
    #[arg(long, env = "RESNET_SERVE_DEVICE", default_value = "cpu")]
    pub device: Device,

    /// Run on the CPU when CUDA is requested but unavailable, instead of failing at start.
    #[arg(long, env = "RESNET_SERVE_ALLOW_CPU_FALLBACK")]
    pub allow_cpu_fallback: bool,

    /// Threads per ONNX Runtime session [default: cores / instances].
    #[arg(long, env = "RESNET_SERVE_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,

    /// ONNX Runtime's CPU memory arena: keeps freed tensor buffers for reuse instead of
    /// returning them. Off by default: measured just as fast, and memory stays bounded
    /// (ResNet-50 under load: 520 MiB without it, 824 MiB with it; docs/PERFORMANCE.md).
    #[arg(long, env = "RESNET_SERVE_CPU_ARENA", default_value = "false", action = clap::ArgAction::Set)]
    pub cpu_arena: bool,

    /// Let ONNX Runtime's intra-op threads spin-wait for work between operators instead of
    /// sleeping. On by default (ONNX Runtime's default): ResNet-50 at concurrency 1 is 0.7 ms
    /// faster with it. Off saves the CPU the spinning burns between requests and lowers tail
    /// latency of light models on busy cores (docs/PERFORMANCE.md).
    #[arg(long, env = "RESNET_SERVE_INTRA_OP_SPINNING", default_value = "true", action = clap::ArgAction::Set)]
    pub intra_op_spinning: bool,

    /// Images decoded and preprocessed at once [default: cores].
    #[arg(long, env = "RESNET_SERVE_PREPROCESS_THREADS")]
    pub preprocess_threads: Option<usize>,

    /// Threads that serve connections and requests (the async runtime's workers); decoding
    /// and inference have their own [default: 1 on up to 2 cores, else cores / 4, at least 2].
    /// On 2 cores one served model-bound loads as fast as two, at lower latency; loads of
    /// many small requests to a light model want more (docs/PERFORMANCE.md).
    #[arg(long, env = "RESNET_SERVE_IO_THREADS")]
    pub io_threads: Option<usize>,

    /// ONNX Runtime library [default: $ORT_DYLIB_PATH, then the copy fetched at build time].
    #[arg(long, env = "RESNET_SERVE_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// Batching defaults; a model's config.toml overrides them.
#[derive(Debug, Clone, Args)]
pub struct BatchingConfig {
    /// Largest batch handed to a model.
    #[arg(long, env = "RESNET_SERVE_MAX_BATCH_SIZE", default_value = "32")]
    pub max_batch_size: usize,

    /// How long a partial batch may wait for a preferred size (0 = run at once when idle).
    #[arg(long, env = "RESNET_SERVE_MAX_QUEUE_DELAY_US", default_value = "0")]
    pub max_queue_delay_us: u64,

    /// Images that may wait per model before requests get 429.
    #[arg(long, env = "RESNET_SERVE_MAX_QUEUE_SIZE", default_value = "256")]
    pub max_queue_size: usize,

    /// Latency target: measure batch times at load, use the batch size with the most images/s
    /// whose worst case (2 × batch time) fits, and answer 429 at once to requests expected to
    /// finish past the target or their deadline behind the queue (instead of serving them
    /// late or answering 504 later). Unset: batching as configured.
    #[arg(long, env = "RESNET_SERVE_TARGET_P99_MS")]
    pub target_p99_ms: Option<u64>,

    /// Request deadline when the client sets none; also caps client deadlines.
    #[arg(long, env = "RESNET_SERVE_REQUEST_TIMEOUT_MS", default_value = "30000")]
    pub request_timeout_ms: u64,
}

/// Request limits.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Require `Authorization: Bearer <key>` on the inference and model APIs (health,
    /// metrics and the web page stay open).
    #[arg(long, env = "RESNET_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Requests processed at once; beyond it requests get 429.
    #[arg(
        long,
        env = "RESNET_SERVE_MAX_CONCURRENT_REQUESTS",
        default_value = "512"
    )]
    pub max_concurrent_requests: usize,

    /// Largest HTTP request body in bytes.
    #[arg(long, env = "RESNET_SERVE_MAX_BODY_BYTES", default_value = "33554432")]
    pub max_body_bytes: usize,

    /// Time for a whole request body to arrive; slower uploads get 408.
    #[arg(
        long,
        env = "RESNET_SERVE_BODY_READ_TIMEOUT_MS",
        default_value = "60000"
    )]
    pub body_read_timeout_ms: u64,

    /// Open connections per listener; further clients wait in the accept backlog.
    #[arg(long, env = "RESNET_SERVE_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: usize,

    /// Time for a new connection's first bytes, its TLS handshake and each HTTP/1 request's
    /// headers (an HTTP/1 connection idle this long is closed).
    #[arg(
        long,
        env = "RESNET_SERVE_HEADER_READ_TIMEOUT_MS",
        default_value = "30000"
    )]
    pub header_read_timeout_ms: u64,

    /// Largest request head in bytes (request line and headers); HTTP/1 beyond it gets 431.
    #[arg(long, env = "RESNET_SERVE_MAX_HEADER_BYTES", default_value = "65536")]
    pub max_header_bytes: usize,

    /// Concurrent streams (requests) per HTTP/2 connection.
    #[arg(
        long,
        env = "RESNET_SERVE_MAX_CONCURRENT_STREAMS",
        default_value = "256"
    )]
    pub max_concurrent_streams: u32,

    /// Largest image in pixels (width × height), checked before decoding.
    #[arg(
        long,
        env = "RESNET_SERVE_MAX_IMAGE_PIXELS",
        default_value = "40000000"
    )]
    pub max_image_pixels: u64,

    /// Largest ratio of an image's long side to its short side.
    #[arg(long, env = "RESNET_SERVE_MAX_ASPECT_RATIO", default_value = "32")]
    pub max_aspect_ratio: f64,
}

/// Readiness and shutdown.
#[derive(Debug, Clone, Args)]
pub struct LifecycleConfig {
    /// Ready only when every model is loaded (false: when at least one is).
    #[arg(long, env = "RESNET_SERVE_STRICT_READINESS", default_value = "true", action = clap::ArgAction::Set)]
    pub strict_readiness: bool,

    /// Stop at start-up when a model fails to load (false: serve the others).
    #[arg(long, env = "RESNET_SERVE_EXIT_ON_ERROR", default_value = "true", action = clap::ArgAction::Set)]
    pub exit_on_error: bool,

    /// Allow loading and unloading models on request (KServe V2 repository API).
    #[arg(long, env = "RESNET_SERVE_ENABLE_MODEL_CONTROL")]
    pub enable_model_control: bool,

    /// Reload models whose versions changed on disk every this many seconds (0 = off).
    #[arg(
        long,
        env = "RESNET_SERVE_REPOSITORY_POLL_SECONDS",
        default_value = "0"
    )]
    pub repository_poll_seconds: u64,

    /// After SIGTERM, seconds to keep accepting while load balancers stop sending.
    #[arg(long, env = "RESNET_SERVE_DRAIN_SECONDS", default_value = "5")]
    pub drain_seconds: u64,

    /// Then, seconds to finish in-flight requests before exiting.
    #[arg(
        long,
        env = "RESNET_SERVE_SHUTDOWN_TIMEOUT_SECONDS",
        default_value = "30"
    )]
    pub shutdown_timeout_seconds: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

impl ServeConfig {
    /// Checks values clap cannot, naming the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        let batching = &self.batching;
        if batching.max_batch_size == 0 {
            return Err("--max-batch-size must be at least 1".into());
        }
        if batching.max_queue_size < batching.max_batch_size {
            return Err(format!(
                "--max-queue-size ({}) must be at least --max-batch-size ({})",
                batching.max_queue_size, batching.max_batch_size
            ));
        }
        if batching.target_p99_ms == Some(0) {
            return Err("--target-p99-ms must be positive".into());
        }
        if batching.request_timeout_ms == 0 {
            return Err("--request-timeout-ms must be positive".into());
        }
        let limits = &self.limits;
        if limits.max_concurrent_requests == 0 {
            return Err("--max-concurrent-requests must be at least 1".into());
        }
        if limits.max_connections == 0
            || limits.max_concurrent_streams == 0
            || limits.header_read_timeout_ms == 0
            || limits.body_read_timeout_ms == 0
        {
            return Err("--max-connections, --max-concurrent-streams, --header-read-timeout-ms and --body-read-timeout-ms must be positive".into());
        }
        if limits.max_body_bytes == 0 || limits.max_image_pixels == 0 {
            return Err("--max-body-bytes and --max-image-pixels must be positive".into());
        }
        if limits.max_aspect_ratio.is_nan() || limits.max_aspect_ratio < 1.0 {
            return Err(format!(
                "--max-aspect-ratio must be at least 1, got {}",
                limits.max_aspect_ratio
            ));
        }
        let runtime = &self.runtime;
        if [
            runtime.intra_op_threads,
            runtime.preprocess_threads,
            runtime.io_threads,
        ]
        .contains(&Some(0))
        {
            return Err(
                "--intra-op-threads, --preprocess-threads and --io-threads must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// Worker threads of the async runtime: `--io-threads` (0, refused by [`Self::validate`],
    /// counts as 1), else 1 on up to 2 `cores` (the only size measured) and a quarter of
    /// them, at least 2, on more.
    pub fn io_threads(&self, cores: usize) -> usize {
        let default = if cores <= 2 { 1 } else { (cores / 4).max(2) };
        self.runtime.io_threads.unwrap_or(default).max(1)
    }

    /// Whether gRPC shares the HTTP listener.
    pub fn single_port(&self) -> bool {
        let network = &self.network;
        network.single_port || (network.grpc_port == network.http_port && network.http_port != 0)
    }

    /// Defaults for model configs.
    pub fn server_defaults(&self) -> ServerDefaults {
        ServerDefaults {
            max_batch_size: self.batching.max_batch_size,
            max_queue_delay_us: self.batching.max_queue_delay_us,
            max_queue_size: self.batching.max_queue_size,
            request_timeout_ms: self.batching.request_timeout_ms,
            device: self.runtime.device.to_string(),
        }
    }

    /// Limits on connections.
    pub fn connection_limits(&self) -> crate::listen::ConnectionLimits {
        crate::listen::ConnectionLimits {
            max_connections: self.limits.max_connections,
            header_read_timeout: std::time::Duration::from_millis(
                self.limits.header_read_timeout_ms,
            ),
            max_header_bytes: self.limits.max_header_bytes,
            max_concurrent_streams: self.limits.max_concurrent_streams,
        }
    }

    /// Limits checked on every image.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.limits.max_image_pixels,
            max_aspect_ratio: self.limits.max_aspect_ratio,
        }
    }
}

/// The CPUs this process may run on (a container's CPU quota included), at least 1: what the
/// thread defaults are sized from.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

/// Whether a presented API key equals `--api-key`, in time that depends only on the lengths
/// (not on where the bytes differ).
pub fn api_key_matches(given: &str, key: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_compare_whole() {
        assert!(api_key_matches("s3cret", "s3cret"));
        assert!(!api_key_matches("s3cre", "s3cret"));
        assert!(!api_key_matches("s3creT", "s3cret"));
        assert!(!api_key_matches("", "s3cret"));
    }

    #[test]
    fn defaults_match_the_design() {
        let config = ServeConfig::try_parse_from(["resnet-serve"]).unwrap();
        assert_eq!(config.model_repository, PathBuf::from("models"));
        assert_eq!(config.network.http_port, 8000);
        assert_eq!(config.network.grpc_port, 8001);
        assert_eq!(config.network.metrics_port, 8002);
        assert_eq!(config.batching.max_batch_size, 32);
        assert_eq!(config.limits.max_body_bytes, 32 << 20);
        assert!(config.lifecycle.strict_readiness && config.lifecycle.exit_on_error);
        assert!(!config.runtime.cpu_arena);
        assert!(config.runtime.intra_op_spinning);
        assert_eq!(config.batching.target_p99_ms, None);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn io_threads_default_to_one_on_two_cores_and_a_quarter_above_and_refuse_zero() {
        let config = ServeConfig::try_parse_from(["resnet-serve"]).unwrap();
        let by_cores: Vec<usize> = [1, 2, 4, 8, 16]
            .into_iter()
            .map(|cores| config.io_threads(cores))
            .collect();
        assert_eq!(by_cores, [1, 1, 2, 2, 4]);
        let config = ServeConfig::try_parse_from(["resnet-serve", "--io-threads", "3"]).unwrap();
        assert_eq!(config.io_threads(2), 3);
        let config = ServeConfig::try_parse_from(["resnet-serve", "--io-threads", "0"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--io-threads"));
    }

    #[test]
    fn booleans_take_explicit_values() {
        let config = ServeConfig::try_parse_from([
            "resnet-serve",
            "--strict-readiness=false",
            "--exit-on-error",
            "false",
        ])
        .unwrap();
        assert!(!config.lifecycle.strict_readiness && !config.lifecycle.exit_on_error);
    }

    #[test]
    fn validation_names_the_flag() {
        let config = ServeConfig::try_parse_from([
            "resnet-serve",
            "--max-batch-size",
            "64",
            "--max-queue-size",
            "8",
        ])
        .unwrap();
        assert!(config.validate().unwrap_err().contains("--max-queue-size"));
        assert!(ServeConfig::try_parse_from(["resnet-serve", "--device", "tpu"]).is_err());
    }
}
