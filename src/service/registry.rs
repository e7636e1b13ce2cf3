//! Loads the model repository into running model versions (sessions + batcher), checks each
//! with warm-up batches and its golden inputs, and tracks which versions are ready.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::memory;
use super::pipeline::{self, ImageInput, PreprocessPool, Scheduling};
use crate::backend::ort::{self as ort_backend, OrtBackend, SessionOptions};
use crate::backend::{Backend, Device};
use crate::batcher::latency::{self, LatencyProfile};
use crate::batcher::{self, Batcher, BatcherConfig, BatcherHandle, LatencyTarget, policy::Limits};
use crate::config::available_cores;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::preprocess::PreprocessSpec;
use crate::repository::golden::Golden;
use crate::repository::spec::{ModelSpec, ServerDefaults};
use crate::repository::{self, ModelDir};
use crate::values::Fp32Values;

/// Load-time settings.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Repository root.
    pub root: PathBuf,
    /// `--default-model`.
    pub default_model: Option<String>,
    /// Server-wide defaults for model configs.
    pub defaults: ServerDefaults,
    /// `--allow-cpu-fallback`.
    pub allow_cpu_fallback: bool,
    /// `--intra-op-threads` (default: cores / instances).
    pub intra_op_threads: Option<usize>,
    /// `--enable-model-control`: load and unload on request.
    pub model_control: bool,
    /// `--cpu-arena`.
    pub cpu_arena: bool,
    /// `--intra-op-spinning`.
    pub intra_op_spinning: bool,
    /// `--target-p99-ms`: measure batch latencies at load, choose the fastest batch size that
    /// meets the target, and refuse requests that would finish past the target or their
    /// deadline.
    pub target_p99: Option<Duration>,
}

/// A model version that is running.
pub struct LoadedModel {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Resolved spec.
    pub spec: ModelSpec,
    /// Preprocessing, shared with the blocking pool.
    pub preprocess: Arc<PreprocessSpec>,
    /// Execution provider in use.
    pub device: Device,
    batcher: BatcherHandle,
}

impl LoadedModel {
    /// Refuses at once, before its images are decoded, a request of `images` that admission
    /// control would refuse if it were queued now.
    pub fn check_admission(
        &self,
        images: usize,
        scheduling: Scheduling,
        timeout_ms: u64,
    ) -> Result<(), ServiceError> {
        pipeline::check_admission(
            &self.batcher,
            &self.name,
            images,
            self.spec.batching.max_batch_size,
            scheduling,
            timeout_ms,
        )
    }

    /// Runs preprocessed `input` of a request through the batcher.
    pub async fn infer(
        &self,
        input: Fp32Values,
        scheduling: Scheduling,
        timeout_ms: u64,
    ) -> Result<pipeline::Inferred, ServiceError> {
        pipeline::infer(
            &self.batcher,
            &self.name,
            input,
            self.spec.preprocess.tensor_len(),
            self.spec.batching.max_batch_size,
            scheduling,
            timeout_ms,
        )
        .await
    }
}

/// Lifecycle state of a model version (as in Triton's repository index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionState {
    /// Being loaded.
    Loading,
    /// Serving.
    Ready,
    /// Failed to load or stopped, with the reason.
    Unavailable(String),
}

impl VersionState {
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Loading => "LOADING",
            Self::Ready => "READY",
            Self::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// One version's state and, once loaded, its running model.
#[derive(Clone)]
pub struct VersionEntry {
    /// Lifecycle state.
    pub state: VersionState,
    /// The running model, when loaded.
    pub loaded: Option<Arc<LoadedModel>>,
}

/// Every model version the server knows, by name and number.
pub struct Registry {
    default_model: String,
    models: RwLock<BTreeMap<String, BTreeMap<u64, VersionEntry>>>,
    /// The running batcher of each loaded version; taken out to stop it.
    batchers: std::sync::Mutex<BTreeMap<(String, u64), Batcher>>,
    /// What loading needs: settings, the preprocessing pool (golden checks), metrics.
    options: LoadOptions,
    pool: PreprocessPool,
    metrics: Arc<Metrics>,
    /// Serialises loads and unloads, so two rollouts never interleave.
    control: tokio::sync::Mutex<()>,
}

/// The reason recorded for a version taken out of service on purpose.
const UNLOADED: &str = "unloaded";

impl Registry {
    /// The default model's name.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// A snapshot of every model's versions.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<u64, VersionEntry>> {
        self.models
            .read()
            .map(|models| models.clone())
            .unwrap_or_default()
    }

    /// Finds a ready model version: the default model when `model` is `None`, the highest
    /// ready version when `version` is `None`.
    pub fn resolve(
        &self,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, ServiceError> {
        let name = model.unwrap_or(&self.default_model);
        let models = self
            .models
            .read()
            .map_err(|_| ServiceError::Internal("model registry lock poisoned".into()))?;
        let Some(versions) = models.get(name) else {
            return Err(ServiceError::ModelNotFound {
                model: name.to_string(),
                available: models.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let available = || {
            versions
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let entry = match version {
            Some(text) => {
                let entry = text
                    .parse::<u64>()
                    .ok()
                    .and_then(|number| versions.get(&number));
                let Some(entry) = entry else {
                    return Err(ServiceError::VersionNotFound {
                        model: name.to_string(),
                        version: text.to_string(),
                        available: available(),
                    });
                };
                entry
            }
            None => match versions
                .values()
                .rev()
                .find(|entry| entry.state == VersionState::Ready)
            {
                Some(entry) => entry,
                None => {
                    let reason = versions
                        .values()
                        .next_back()
                        .map(|entry| match &entry.state {
                            VersionState::Unavailable(reason) => reason.clone(),
                            state => state.name().to_lowercase(),
                        })
                        .unwrap_or_else(|| "no versions".into());
                    return Err(ServiceError::ModelNotReady {
                        model: name.to_string(),
                        version: "latest".into(),
                        reason,
                    });
                }
            },
        };
        match (&entry.state, &entry.loaded) {
            (VersionState::Ready, Some(loaded)) => Ok(loaded.clone()),
            (state, loaded) => Err(ServiceError::ModelNotReady {
                model: name.to_string(),
                version: loaded
                    .as_ref()
                    .map(|l| l.version.to_string())
                    .unwrap_or_else(|| version.unwrap_or("latest").to_string()),
                reason: match state {
                    VersionState::Unavailable(reason) => reason.clone(),
                    other => other.name().to_lowercase(),
                },
            }),
        }
    }

    /// Strict: every version ready (but those unloaded on request); otherwise at least one.
    pub fn is_ready(&self, strict: bool) -> bool {
        let Ok(models) = self.models.read() else {
            return false;
        };
        let unloaded = VersionState::Unavailable(UNLOADED.into());
        let mut states = models
            .values()
            .flat_map(|versions| versions.values().map(|entry| &entry.state))
            .filter(|state| **state != unloaded);
        if strict {
            !models.is_empty() && states.all(|state| *state == VersionState::Ready)
        } else {
            states.any(|state| *state == VersionState::Ready)
        }
    }

    /// The first version that failed to load, with its reason.
    pub fn first_failure(&self) -> Option<String> {
        let models = self.models.read().ok()?;
        models.iter().find_map(|(name, versions)| {
            versions
                .iter()
                .find_map(|(version, entry)| match &entry.state {
                    VersionState::Unavailable(reason) => {
                        Some(format!("model `{name}` version {version}: {reason}"))
                    }
                    _ => None,
                })
        })
    }

    /// Marks every version unavailable and stops every batcher once the requests holding it
    /// have finished (shutdown).
    pub async fn shutdown(&self) {
        if let Ok(mut models) = self.models.write() {
            for entry in models.values_mut().flat_map(BTreeMap::values_mut) {
                entry.loaded = None;
                entry.state = VersionState::Unavailable(UNLOADED.into());
            }
        }
        let batchers = self
            .batchers
            .lock()
            .map(|mut batchers| std::mem::take(&mut *batchers))
            .unwrap_or_default();
        for batcher in batchers.into_values() {
            batcher.shutdown().await;
        }
    }

    /// Whether `--enable-model-control` allows load and unload requests.
    pub fn model_control(&self) -> bool {
        self.options.model_control
    }

    /// (Re)loads every version of `name` that its config serves, from the repository on disk.
    /// Each new version is loaded, warmed up and golden-checked while the old ones keep
    /// serving, then swapped in; versions the policy no longer serves are retired after.
    /// On failure the versions that were serving stay in service.
    pub async fn load_model(&self, name: &str) -> Result<(), ServiceError> {
        let _control = self.control.lock().await;
        let root = self.options.root.clone();
        let dirs = tokio::task::spawn_blocking(move || repository::scan(&root))
            .await
            .map_err(|error| ServiceError::Internal(error.to_string()))?
            .map_err(|error| ServiceError::Internal(error.to_string()))?;
        let Some(dir) = dirs.iter().find(|dir| dir.name == name) else {
            return Err(ServiceError::ModelNotFound {
                model: name.to_string(),
                available: dirs
                    .iter()
                    .map(|dir| dir.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let served = dir.served_versions();
        if served.is_empty() {
            let reason = dir
                .config
                .clone()
                .err()
                .unwrap_or_else(|| "no numbered version directory".into());
            return Err(ServiceError::LoadFailed {
                model: name.to_string(),
                reason,
            });
        }
        let mut failures = Vec::new();
        for &version in &served {
            match load_version(dir, version, &self.options, &self.pool, &self.metrics).await {
                Ok((loaded, batcher)) => self.install(name, version, loaded, batcher),
                Err(reason) => {
                    tracing::error!(model = name, version, %reason, "model failed to load");
                    self.record_failure(name, version, &reason);
                    failures.push(format!("version {version}: {reason}"));
                }
            }
        }
        memory::release_free().await;
        let current: Vec<u64> = self
            .models
            .read()
            .map(|models| {
                models
                    .get(name)
                    .map(|versions| versions.keys().copied().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        if !failures.is_empty() {
            // The rollout did not complete: what was serving keeps serving.
            return Err(ServiceError::LoadFailed {
                model: name.to_string(),
                reason: failures.join("; "),
            });
        }
        for version in current
            .into_iter()
            .filter(|version| !served.contains(version))
        {
            self.retire(name, version);
        }
        Ok(())
    }

    /// Takes every version of `name` out of service; in-flight requests finish first.
    pub async fn unload_model(&self, name: &str) -> Result<(), ServiceError> {
        let _control = self.control.lock().await;
        let versions: Vec<u64> = {
            let models = self
                .models
                .read()
                .map_err(|_| ServiceError::Internal("registry lock poisoned".into()))?;
            match models.get(name) {
                Some(versions) => versions.keys().copied().collect(),
                None => {
                    return Err(ServiceError::ModelNotFound {
                        model: name.to_string(),
                        available: models.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
        };
        for version in versions {
            self.retire(name, version);
        }
        Ok(())
    }

    /// Puts a loaded version in service, replacing (and then stopping) any previous instance.
    fn install(&self, name: &str, version: u64, loaded: LoadedModel, batcher: Batcher) {
        tracing::info!(model = name, version, "model version in service");
        let label = version.to_string();
        let previous = self.batchers.lock().ok().and_then(|mut batchers| {
            let previous = batchers.remove(&(name.to_string(), version));
            // The draining batcher lets go of the version's series before its successor
            // takes it.
            if let Some(previous) = &previous {
                previous.withdraw_margin();
            }
            batcher.publish_margin(&self.metrics.admission_margin, &[name, &label]);
            batchers.insert((name.to_string(), version), batcher);
            previous
        });
        if let Ok(mut models) = self.models.write() {
            let versions = models.entry(name.to_string()).or_default();
            // The placeholder for "no loadable version" goes once a version loads.
            versions.retain(|number, entry| *number != 0 || entry.loaded.is_some());
            versions.insert(
                version,
                VersionEntry {
                    state: VersionState::Ready,
                    loaded: Some(Arc::new(loaded)),
                },
            );
        }
        self.metrics
            .model_ready
            .with_label_values(&[name, &label])
            .set(1);
        if let Some(previous) = previous {
            tokio::spawn(stop(previous));
        }
    }

    /// Records a failed load, unless that version is serving already (it keeps serving).
    fn record_failure(&self, name: &str, version: u64, reason: &str) {
        if let Ok(mut models) = self.models.write() {
            let versions = models.entry(name.to_string()).or_default();
            let serving = versions
                .get(&version)
                .is_some_and(|entry| entry.state == VersionState::Ready);
            if !serving {
                versions.insert(
                    version,
                    VersionEntry {
                        state: VersionState::Unavailable(reason.to_string()),
                        loaded: None,
                    },
                );
                self.metrics
                    .model_ready
                    .with_label_values(&[name, &version.to_string()])
                    .set(0);
            }
        }
    }

    /// Takes one version out of service and stops its batcher once its requests are done.
    fn retire(&self, name: &str, version: u64) {
        tracing::info!(model = name, version, "model version unloaded");
        if let Ok(mut models) = self.models.write()
            && let Some(entry) = models
                .get_mut(name)
                .and_then(|versions| versions.get_mut(&version))
        {
            entry.loaded = None;
            entry.state = VersionState::Unavailable(UNLOADED.into());
        }
        self.metrics
            .model_ready
            .with_label_values(&[name, &version.to_string()])
            .set(0);
        let batcher = self
            .batchers
            .lock()
            .ok()
            .and_then(|mut batchers| batchers.remove(&(name.to_string(), version)));
        if let Some(batcher) = batcher {
            tokio::spawn(stop(batcher));
        }
        // Absent unless the version had a latency target. The draining batcher's handle is
        // detached from the registry now: a later load of this version starts a new series.
        let _ = self
            .metrics
            .admission_margin
            .remove_label_values(&[name, &version.to_string()]);
    }

    /// Reloads what changed on disk: models whose served versions differ from those in
    /// service, new model directories; unloads models whose directory is gone.
    pub async fn poll(&self) {
        let root = self.options.root.clone();
        let Ok(Ok(dirs)) = tokio::task::spawn_blocking(move || repository::scan(&root)).await
        else {
            tracing::warn!("repository poll: cannot scan the repository");
            return;
        };
        let in_service: BTreeMap<String, Vec<u64>> = self
            .snapshot()
            .into_iter()
            .map(|(name, versions)| {
                let ready = versions
                    .into_iter()
                    .filter(|(_, entry)| entry.state == VersionState::Ready)
                    .map(|(v, _)| v)
                    .collect();
                (name, ready)
            })
            .collect();
        for dir in &dirs {
            if in_service.get(&dir.name) != Some(&dir.served_versions())
                && let Err(error) = self.load_model(&dir.name).await
            {
                tracing::warn!(model = %dir.name, %error, "repository poll: load failed");
            }
        }
        for name in in_service
            .keys()
            .filter(|name| !dirs.iter().any(|dir| &dir.name == *name))
        {
            if let Err(error) = self.unload_model(name).await {
                tracing::warn!(model = %name, %error, "repository poll: unload failed");
            }
        }
    }
}

/// Loads every model in the repository. Failures of one model are recorded as that version's
/// state; only an unreadable repository or an ambiguous default model is an error.
pub async fn load(
    options: &LoadOptions,
    pool: &PreprocessPool,
    metrics: &Arc<Metrics>,
) -> Result<Registry, String> {
    let dirs = repository::scan(&options.root).map_err(|error| error.to_string())?;
    let default_model = repository::default_model(&dirs, options.default_model.as_deref())?;
    let mut models = BTreeMap::new();
    let mut batchers = BTreeMap::new();
    for dir in &dirs {
        let mut versions = BTreeMap::new();
        let served = dir.served_versions();
        if served.is_empty() {
            let reason = match &dir.config {
                Err(error) => error.clone(),
                Ok(_) => "no numbered version directory with model.onnx".into(),
            };
            tracing::error!(model = %dir.name, %reason, "model unavailable");
            versions.insert(
                0,
                VersionEntry {
                    state: VersionState::Unavailable(reason),
                    loaded: None,
                },
            );
        }
        for version in served {
            let started = Instant::now();
            let entry = match load_version(dir, version, options, pool, metrics).await {
                Ok((loaded, batcher)) => {
                    let label = version.to_string();
                    batcher.publish_margin(&metrics.admission_margin, &[&dir.name, &label]);
                    batchers.insert((dir.name.clone(), version), batcher);
                    tracing::info!(
                        model = %dir.name, version, device = %loaded.device,
                        seconds = started.elapsed().as_secs_f64(), "model ready"
                    );
                    metrics
                        .model_ready
                        .with_label_values(&[dir.name.as_str(), &label])
                        .set(1);
                    VersionEntry {
                        state: VersionState::Ready,
                        loaded: Some(Arc::new(loaded)),
                    }
                }
                Err(reason) => {
                    tracing::error!(model = %dir.name, version, %reason, "model failed to load");
                    metrics
                        .model_ready
                        .with_label_values(&[dir.name.as_str(), &version.to_string()])
                        .set(0);
                    VersionEntry {
                        state: VersionState::Unavailable(reason),
                        loaded: None,
                    }
                }
            };
            versions.insert(version, entry);
        }
        models.insert(dir.name.clone(), versions);
    }
    memory::release_free().await;
    Ok(Registry {
        default_model,
        models: RwLock::new(models),
        batchers: std::sync::Mutex::new(batchers),
        options: options.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        control: tokio::sync::Mutex::new(()),
    })
}

/// Stops a batcher taken out of service, then returns what its sessions held to the system.
async fn stop(batcher: Batcher) {
    batcher.shutdown().await;
    memory::release_free().await;
}

async fn load_version(
    dir: &ModelDir,
    version: u64,
    options: &LoadOptions,
    pool: &PreprocessPool,
    metrics: &Arc<Metrics>,
) -> Result<(LoadedModel, Batcher), String> {
    let config = dir.config.clone()?;
    let labels = dir.labels(&config)?;
    let path = dir.model_file(version);
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    let device_text = config
        .instances
        .device
        .clone()
        .unwrap_or_else(|| options.defaults.device.clone());
    let device: Device = device_text.parse()?;
    let instances = config.instances.count.unwrap_or(1).max(1);
    let cores = available_cores();
    let session_options = SessionOptions {
        device,
        allow_cpu_fallback: options.allow_cpu_fallback,
        intra_op_threads: options
            .intra_op_threads
            .unwrap_or((cores / instances).max(1)),
        cpu_arena: options.cpu_arena,
        intra_op_spinning: options.intra_op_spinning,
    };
    // Building sessions is slow, blocking work: keep it off the async workers.
    let building = Instant::now();
    let opened = tokio::task::spawn_blocking(move || {
        (0..instances)
            .map(|_| ort_backend::open(&path, &session_options))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|error| error.to_string())?
    .map_err(|error| error.to_string())?;
    tracing::info!(
        model = %dir.name, version, instances,
        seconds = building.elapsed().as_secs_f64(), "ONNX Runtime sessions built"
    );
    let Some((_, signature, actual_device)) = opened.first() else {
        return Err("no instances".into());
    };
    let (signature, actual_device) = (signature.clone(), *actual_device);
    let mut spec = repository::spec::resolve(&config, &signature, labels, &options.defaults)
        .map_err(|error| error.to_string())?;
    let backends: Vec<Box<dyn Backend>> = opened
        .into_iter()
        .map(|(session, _, device)| {
            Box::new(OrtBackend::new(
                session,
                spec.input_name.clone(),
                spec.output_name.clone(),
                spec.dims.to_vec(),
                device,
            )) as Box<dyn Backend>
        })
        .collect();
    let (backends, admission) = match options.target_p99 {
        Some(target) => {
            let (backends, profile) = calibrate(backends, &mut spec, target).await?;
            (backends, Some(LatencyTarget { profile, target }))
        }
        None => (backends, None),
    };
    let batching = &spec.batching;
    let batcher = batcher::spawn(
        backends,
        BatcherConfig {
            model: dir.name.clone(),
            limits: Limits {
                max_batch_size: batching.max_batch_size,
                max_queue_delay: batching.max_queue_delay,
                preferred_batch_sizes: batching.preferred_batch_sizes.clone(),
                priority_levels: batching.priority_levels as usize,
            },
            max_queue_size: batching.max_queue_size,
            tensor_len: spec.preprocess.tensor_len(),
            classes: spec.classes,
            admission,
        },
        metrics.clone(),
    )
    .map_err(|error| format!("cannot start worker threads: {error}"))?;
    let Some(handle) = batcher.handle() else {
        return Err("batcher has no handle".into());
    };
    let loaded = LoadedModel {
        name: dir.name.clone(),
        version,
        preprocess: Arc::new(spec.preprocess.clone()),
        spec,
        device: actual_device,
        // The checks below are the server's own: not subject to the latency target.
        batcher: handle.without_admission(),
    };
    let checked = async {
        warm_up(&loaded).await?;
        check_golden(dir, &loaded, pool).await
    };
    match checked.await {
        Ok(()) => Ok((
            LoadedModel {
                batcher: handle,
                ..loaded
            },
            batcher,
        )),
        Err(reason) => {
            drop((loaded, handle));
            batcher.shutdown().await;
            Err(reason)
        }
    }
}

/// Measures batch latencies on the first instance and fits the batching to `target`: the
/// fastest batch size (images/s) whose worst case (waiting for a running batch, then its own)
/// stays within the target, no queue delay (work-conserving batching fills batches under load
/// by itself).
async fn calibrate(
    mut backends: Vec<Box<dyn Backend>>,
    spec: &mut ModelSpec,
    target: Duration,
) -> Result<(Vec<Box<dyn Backend>>, LatencyProfile), String> {
    let configured = spec.batching.max_batch_size;
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |size| size.checked_mul(2))
        .take_while(|&size| size < configured)
        .chain([configured])
        .chain(spec.batching.preferred_batch_sizes.iter().copied())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let tensor_len = spec.preprocess.tensor_len();
    let (backends, points) = tokio::task::spawn_blocking(move || {
        let points = match backends.first_mut() {
            Some(backend) => {
                // Grown to the largest size measured, not the largest configured.
                let mut input = Vec::new();
                latency::measure_batch_times(&sizes, target, |size| {
                    let values = size * tensor_len;
                    if input.len() < values {
                        input.resize(values, 0.0);
                    }
                    let started = Instant::now();
                    backend.infer(&input[..values], size)?;
                    Ok::<_, crate::backend::BackendError>(started.elapsed())
                })?
            }
            None => Vec::new(),
        };
        Ok::<_, crate::backend::BackendError>((backends, points))
    })
    .await
    .map_err(|error| error.to_string())?
    .map_err(|error| format!("calibration failed: {error}"))?;
    let profile = LatencyProfile::new(points).ok_or("calibration measured nothing")?;
    let chosen = profile.batch_size_for(target, configured);
    let batching = &mut spec.batching;
    batching.max_batch_size = chosen;
    batching.max_queue_delay = Duration::ZERO;
    batching
        .preferred_batch_sizes
        .retain(|&size| size <= chosen);
    batching.target_p99 = Some(target);
    batching.measured_latency = profile.points().to_vec();
    let batch_ms = profile.estimate(chosen).as_secs_f64() * 1000.0;
    if profile.estimate(1) * 2 > target {
        tracing::warn!(
            target_p99_ms = target.as_millis() as u64,
            batch_1_ms = profile.estimate(1).as_secs_f64() * 1000.0,
            "--target-p99-ms is below two single-image batches; serving one image at a time"
        );
    }
    tracing::info!(
        target_p99_ms = target.as_millis() as u64,
        max_batch_size = chosen,
        configured_max_batch_size = configured,
        batch_ms,
        max_queue_delay_us = 0,
        profile = ?profile.points(),
        "batching calibrated"
    );
    Ok((backends, profile))
}

/// Runs the first batches so requests do not pay for ONNX Runtime's lazy initialisation. On
/// CUDA every batch shape pays for its own kernel selection, so each preferred size, 1 and the
/// maximum run; on the CPU one image suffices (the rest is per-shape memory planning, a few
/// percent of one batch), which keeps a ResNet-50's start from paying for ~57 images.
async fn warm_up(model: &LoadedModel) -> Result<(), String> {
    let batching = &model.spec.batching;
    let mut sizes = vec![1];
    if model.device != Device::Cpu {
        sizes.extend(&batching.preferred_batch_sizes);
        sizes.push(batching.max_batch_size);
    }
    sizes.sort_unstable();
    sizes.dedup();
    let tensor_len = model.spec.preprocess.tensor_len();
    for size in sizes {
        let arrived = Instant::now();
        let scheduling = Scheduling {
            level: batching.priority_levels as usize - 1,
            arrived,
            deadline: arrived + Duration::from_secs(600),
        };
        model
            .infer(vec![0.0; size * tensor_len].into(), scheduling, 600_000)
            .await
            .map_err(|error| format!("warm-up with batch size {size} failed: {error}"))?;
    }
    Ok(())
}

/// Sends each golden image through decode, preprocess, batching and inference and compares
/// the logits with the trainer's.
async fn check_golden(
    dir: &ModelDir,
    model: &LoadedModel,
    pool: &PreprocessPool,
) -> Result<(), String> {
    let path = dir.path.join("golden.json");
    if !path.exists() {
        tracing::warn!(model = %model.name, "no golden.json: train/serve skew is not checked");
        return Ok(());
    }
    let golden = Golden::read(&path)?;
    let mut images = Vec::with_capacity(golden.cases.len());
    for case in &golden.cases {
        let file = dir.path.join(&case.file);
        let bytes = std::fs::read(&file)
            .map_err(|error| format!("golden image {}: {error}", file.display()))?;
        images.push(ImageInput::Encoded(Bytes::from(bytes)));
    }
    if images.is_empty() {
        return Ok(());
    }
    let arrived = Instant::now();
    let deadline = arrived + Duration::from_secs(600);
    let input = pool
        .run(images, &model.preprocess, deadline, true, 600_000)
        .await
        .map_err(|error| format!("golden check: {error}"))?;
    let scheduling = Scheduling {
        level: 0,
        arrived,
        deadline,
    };
    let inferred = model
        .infer(input.into(), scheduling, 600_000)
        .await
        .map_err(|error| format!("golden check: {error}"))?;
    let classes = model.spec.classes;
    for (case, logits) in golden
        .cases
        .iter()
        .zip(inferred.logits.chunks_exact(classes))
    {
        if let Some((index, actual, expected)) = golden.mismatch(logits, &case.logits) {
            return Err(format!(
                "golden check failed for {}: logit {index} is {actual}, expected {expected} \
                 (atol {}, rtol {}); train/serve skew in preprocessing or weights",
                case.file, golden.atol, golden.rtol
            ));
        }
    }
    tracing::info!(model = %model.name, cases = golden.cases.len(), "golden check passed");
    Ok(())
}
