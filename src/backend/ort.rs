//! ONNX Runtime: loading the pinned library, building sessions on the CPU or CUDA execution
//! provider, and running batches. `ort` types stay in this file.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::{Backend, BackendError, Device};
use crate::repository::spec::{ModelSignature, TensorSignature};

/// The ONNX Runtime version `ort` was built against; the loaded library must match it.
pub const ORT_VERSION: &str = "1.31.1";

/// Where build.rs put the library it fetched from the pinned wheel.
const FETCHED_LIBRARY: &str = env!("RESNET_SERVE_FETCHED_ORT");

/// Picks the library: `--ort-lib`, then `ORT_DYLIB_PATH`, then the copy fetched at build time.
pub fn library_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(FETCHED_LIBRARY),
    }
}

/// The process-wide ONNX Runtime environment and its version, once loaded.
static ENVIRONMENT: std::sync::OnceLock<(ort::environment::Environment, String)> =
    std::sync::OnceLock::new();

/// Loads ONNX Runtime from `path` once per process, refusing a missing library or a version
/// other than [`ORT_VERSION`]. Returns the version loaded. A failure is not remembered, so a
/// later call may name another library.
pub fn init(path: &Path) -> Result<String, BackendError> {
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _loading = LOADING
        .lock()
        .map_err(|_| BackendError::Library("ONNX Runtime loader poisoned".into()))?;
    if let Some((_, version)) = ENVIRONMENT.get() {
        return Ok(version.clone());
    }
    let (environment, version) = load(path).map_err(BackendError::Library)?;
    Ok(ENVIRONMENT.get_or_init(|| (environment, version)).1.clone())
}

fn environment() -> Result<&'static ort::environment::Environment, BackendError> {
    ENVIRONMENT
        .get()
        .map(|(environment, _)| environment)
        .ok_or_else(|| BackendError::Library("ONNX Runtime is not initialised".into()))
}

fn load(path: &Path) -> Result<(ort::environment::Environment, String), String> {
    if !path.exists() {
        return Err(format!(
            "ONNX Runtime library not found at `{}`; pass --ort-lib or set ORT_DYLIB_PATH, or run \
             `python3 scripts/fetch_onnxruntime.py DIR` to fetch onnxruntime=={ORT_VERSION}",
            path.display()
        ));
    }
    let version = library_version(path)?;
    if version != ORT_VERSION {
        return Err(format!(
            "ONNX Runtime at `{}` is version {version}, but this build requires {ORT_VERSION}",
            path.display()
        ));
    }
    let environment = ort::init_from(path)
        .map_err(|error| error.to_string())?
        .with_name("resnet-serve")
        .build()
        .map_err(|error| error.to_string())?;
    Ok((environment, version))
}

/// Reads the version string of the library at `path` without handing it to `ort`.
fn library_version(path: &Path) -> Result<String, String> {
    let cannot =
        |error: &dyn std::fmt::Display| format!("cannot load `{}`: {error}", path.display());
    // SAFETY: loading ONNX Runtime runs only its library initialisers; the symbol is the C
    // API's documented entry point with this signature, and the returned pointers are static.
    unsafe {
        let library = libloading::Library::new(path).map_err(|error| cannot(&error))?;
        let get_api_base: libloading::Symbol<
            unsafe extern "C" fn() -> *const ort::sys::OrtApiBase,
        > = library.get(b"OrtGetApiBase").map_err(|error| {
            cannot(&format!(
                "not an ONNX Runtime library (no OrtGetApiBase: {error})"
            ))
        })?;
        let base = get_api_base();
        if base.is_null() {
            return Err(cannot(&"OrtGetApiBase returned null"));
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return Err(cannot(&"no version string"));
        }
        let version = std::ffi::CStr::from_ptr(version)
            .to_string_lossy()
            .into_owned();
        // Keep the library loaded: ort loads the same file next.
        std::mem::forget(library);
        Ok(version)
    }
}

/// Options for building a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Where to run.
    pub device: Device,
    /// Fall back to the CPU when CUDA is unavailable.
    pub allow_cpu_fallback: bool,
    /// Threads for one operator.
    pub intra_op_threads: usize,
    /// ONNX Runtime's CPU memory arena (keeps freed buffers for reuse; off returns them).
    pub cpu_arena: bool,
    /// Intra-op threads spin-wait for work instead of sleeping (ONNX Runtime's default).
    pub intra_op_spinning: bool,
}

/// A loaded session and what it expects.
pub struct OrtBackend {
    session: Session,
    input: String,
    output: String,
    dims: Vec<usize>,
    /// The execution provider actually in use.
    pub device: Device,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OrtBackend")
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

fn signature(value: &ort::value::Outlet) -> TensorSignature {
    let (is_f32, shape) = match value.dtype() {
        ValueType::Tensor { ty, shape, .. } => (
            *ty == TensorElementType::Float32,
            shape.iter().copied().collect(),
        ),
        _ => (false, Vec::new()),
    };
    TensorSignature {
        name: value.name().to_string(),
        is_f32,
        shape,
    }
}

/// Opens `path` as a session with `options`; returns the session's signature too.
pub fn open(
    path: &Path,
    options: &SessionOptions,
) -> Result<(Session, ModelSignature, Device), BackendError> {
    let load_error = |error: ort::Error| BackendError::Load {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let builder = Session::builder(environment()?)
        .map_err(load_error)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|error| load_error(error.into()))?
        .with_intra_threads(options.intra_op_threads.max(1))
        .map_err(|error| load_error(error.into()))?
        .with_intra_op_spinning(options.intra_op_spinning)
        .map_err(|error| load_error(error.into()))?;
    let mut builder = builder;
    ort::ep::ExecutionProvider::register(
        &ort::ep::CPU::default().with_arena_allocator(options.cpu_arena),
        &mut builder,
    )
    .map_err(load_error)?;
    let (mut builder, device) = match options.device {
        Device::Cpu => (builder, Device::Cpu),
        Device::Cuda(index) => match cuda(builder, index) {
            Ok(builder) => (builder, Device::Cuda(index)),
            Err(failure) if options.allow_cpu_fallback => {
                let (builder, reason) = *failure;
                tracing::warn!(%reason, "CUDA unavailable, falling back to the CPU");
                (builder, Device::Cpu)
            }
            Err(failure) => return Err(BackendError::CudaUnavailable(failure.1)),
        },
    };
    let session = builder.commit_from_file(path).map_err(load_error)?;
    let signature = ModelSignature {
        inputs: session.inputs().iter().map(signature).collect(),
        outputs: session.outputs().iter().map(signature).collect(),
    };
    Ok((session, signature, device))
}

type Builder = ort::session::builder::SessionBuilder;
/// The builder back (so the caller can fall back to the CPU) and the reason CUDA failed.
type CudaError = Box<(Builder, String)>;

#[cfg(not(feature = "cuda"))]
fn cuda(builder: Builder, _index: u32) -> Result<Builder, CudaError> {
    let reason = "this build has no CUDA support (build with --features cuda)";
    Err(Box::new((builder, reason.into())))
}

#[cfg(feature = "cuda")]
fn cuda(mut builder: Builder, index: u32) -> Result<Builder, CudaError> {
    use ort::ep::ExecutionProvider;
    let failed = |builder: Builder, reason: String| Err(Box::new((builder, reason)));
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return failed(
                builder,
                "this ONNX Runtime library was built without CUDA".into(),
            );
        }
        Err(error) => return failed(builder, error.to_string()),
    }
    let provider = ort::ep::CUDA::default().with_device_id(index as i32);
    match provider.register(&mut builder) {
        Ok(()) => Ok(builder),
        Err(error) => failed(builder, error.to_string()),
    }
}

impl OrtBackend {
    /// Wraps an opened session that takes `input` `[N, dims...]` and returns `output`.
    pub fn new(
        session: Session,
        input: String,
        output: String,
        dims: Vec<usize>,
        device: Device,
    ) -> Self {
        Self {
            session,
            input,
            output,
            dims,
            device,
        }
    }
}

impl Backend for OrtBackend {
    fn infer(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, BackendError> {
        let run = |error: ort::Error| BackendError::Run(error.to_string());
        let mut shape = Vec::with_capacity(self.dims.len() + 1);
        shape.push(batch);
        shape.extend_from_slice(&self.dims);
        let tensor = TensorRef::from_array_view((shape, input)).map_err(run)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(run)?;
        let Some(value) = outputs.get(&self.output) else {
            return Err(BackendError::Run(format!(
                "no output named `{}`",
                self.output
            )));
        };
        let (_, logits) = value.try_extract_tensor::<f32>().map_err(run)?;
        Ok(logits.to_vec())
    }
}
