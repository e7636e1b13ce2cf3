//! The dynamic batcher of one model version: a bounded queue, a scheduler task that asks the
//! pure [`policy`] what to run, and one worker thread per model instance, which takes its next
//! batch from the queue itself when one is ready as its last one ends.

pub mod latency;
pub mod policy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::backend::{Backend, BackendError};
use crate::metrics::Metrics;
use crate::values::Fp32Values;
use latency::{BatchTimes, LatencyProfile, Load, PlanErrors};
use policy::{Decision, Eviction, Limits, Policy, Queued};

/// A request's images, queued for one batch.
pub struct Job {
    /// `images × tensor_len` preprocessed values.
    pub input: Fp32Values,
    /// Number of images in `input`.
    pub images: usize,
    /// Priority level index (0 = highest).
    pub level: usize,
    /// When its request arrived: the latency target counts from here.
    pub arrived: Instant,
    /// Drop the job (504) if it has not started by then.
    pub deadline: Instant,
    /// Where the result goes; the request side drops the receiver if its client leaves.
    pub respond: oneshot::Sender<Result<JobOutput, BatchError>>,
    /// The request's span, so worker logs carry its request id.
    pub span: tracing::Span,
    enqueued: Instant,
    /// What admission control planned for it, when it was admitted under a target.
    plan: Option<Plan>,
}

/// What admission control makes of a job: how long it would take from now, without and with
/// the margin, and the most it may take, bounded by the target or by its deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Assessment {
    planned: Duration,
    expected: Duration,
    budget: Duration,
    bound: &'static str,
}

/// When a job was admitted and how long admission control expected it to take from then.
#[derive(Debug, Clone, Copy)]
struct Plan {
    admitted: Instant,
    expected: Duration,
}

impl Job {
    /// A job for `images` images of preprocessed `input`, from a request that `arrived` then.
    pub fn new(
        input: Fp32Values,
        images: usize,
        level: usize,
        arrived: Instant,
        deadline: Instant,
        respond: oneshot::Sender<Result<JobOutput, BatchError>>,
    ) -> Self {
        let enqueued = Instant::now();
        Self {
            input,
            images,
            level,
            arrived,
            deadline,
            respond,
            span: tracing::Span::current(),
            enqueued,
            plan: None,
        }
    }
}

impl Queued for Job {
    fn images(&self) -> usize {
        self.images
    }
    fn level(&self) -> usize {
        self.level
    }
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn is_cancelled(&self) -> bool {
        self.respond.is_closed()
    }
}

/// A job's result.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// `images × classes` logits, row-major.
    pub logits: Vec<f32>,
    /// Time from enqueue to the start of inference.
    pub queue: Duration,
    /// Inference time of the batch the job ran in.
    pub infer: Duration,
    /// Images in that batch.
    pub batch_size: usize,
}

/// [`BatchError::WouldMissDeadline`]'s bound when the request's own deadline is the nearer.
pub const DEADLINE_BOUND: &str = "remain to the deadline";

/// [`BatchError::WouldMissDeadline`]'s bound when the model's latency target is the nearer.
pub const TARGET_BOUND: &str = "is the model's latency target";

/// Why a job did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The queue holds `capacity` images already.
    #[error("queue is full ({capacity} images waiting)")]
    QueueFull {
        /// Queue capacity in images.
        capacity: usize,
    },
    /// Admission control: the work queued ahead would run past the job's deadline or the
    /// latency target.
    #[error("about {expected_ms} ms of work is ahead, and {budget_ms} ms {bound}")]
    WouldMissDeadline {
        /// Expected time to the result.
        expected_ms: u64,
        /// The time allowed.
        budget_ms: u64,
        /// What allows it: "remain to the deadline" or "is the model's latency target".
        bound: &'static str,
    },
    /// The batcher is stopping.
    #[error("the model is shutting down")]
    ShuttingDown,
    /// The deadline passed before inference started.
    #[error("deadline exceeded after {waited_ms} ms in the queue")]
    DeadlineExceeded {
        /// Time spent queued.
        waited_ms: u64,
    },
    /// The backend failed.
    #[error("{0}")]
    Backend(String),
}

/// Batcher settings for one model version.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Metric label (model name).
    pub model: String,
    /// Policy limits.
    pub limits: Limits,
    /// Images that may wait before submissions get [`BatchError::QueueFull`].
    pub max_queue_size: usize,
    /// f32 values per image.
    pub tensor_len: usize,
    /// Logits per image.
    pub classes: usize,
    /// Admission control (`--target-p99-ms`); `None` = off.
    pub admission: Option<LatencyTarget>,
}

/// What admission control is given: measured batch times and the latency target.
#[derive(Debug, Clone)]
pub struct LatencyTarget {
    /// Inference time by batch size.
    pub profile: LatencyProfile,
    /// `--target-p99-ms`: requests expected to take longer are refused.
    pub target: Duration,
}

/// The submitting side of a batcher; cheap to clone.
#[derive(Clone)]
pub struct BatcherHandle {
    /// To the scheduler task.
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<Metrics>,
    model: String,
    /// Shared with the scheduler and workers, which keep its counters current.
    admission: Option<Arc<Admission>>,
    /// Whether this handle refuses what would miss its bound (not for the server's own jobs,
    /// which still count in the queue).
    enforce_admission: bool,
}

/// What admission control needs besides the queue counter: the measured batch times, the
/// target, and when each instance's running batch is expected to finish.
struct Admission {
    /// What batches take: calibrated at load, corrected by every batch since.
    times: Mutex<BatchTimes>,
    target: Duration,
    max_batch_size: usize,
    /// Origin of `busy_until`.
    epoch: Instant,
    /// Per instance: expected end of its running batch in nanoseconds after `epoch`, 0 when idle.
    busy_until: Vec<AtomicU64>,
    /// How far admitted jobs ran from their plans: the margin on plans.
    plan_errors: Mutex<PlanErrors>,
    /// The `resnet_serve_admission_margin` series this batcher writes whenever the margin
    /// changes: none until the registry puts the version in service, and none again once it
    /// is replaced or unloaded, so a batcher warming up or draining beside the one serving
    /// the same version never shows its own margin there.
    margin_series: Mutex<Option<prometheus::Gauge>>,
    /// Images queued at each priority level: a job waits only behind its own level and those
    /// above it.
    queued_by_level: Vec<AtomicUsize>,
}

impl Admission {
    /// `None` when an instance is idle, else the time until the first running batch should end
    /// (zero when it is late).
    fn until_instance_free(&self, now: Instant) -> Option<Duration> {
        let elapsed = now.duration_since(self.epoch);
        self.busy_until
            .iter()
            .map(|until| match until.load(Ordering::Acquire) {
                0 => None,
                until => Some(Duration::from_nanos(until).saturating_sub(elapsed)),
            })
            // `None` (an idle instance) orders first.
            .min()
            .flatten()
    }

    /// Images queued at `level` and above.
    fn queued_ahead(&self, level: usize) -> usize {
        self.queued_by_level
            .iter()
            .take(level + 1)
            .map(|queued| queued.load(Ordering::Acquire))
            .sum()
    }

    fn enqueued(&self, level: usize, images: usize) {
        if let Some(queued) = self.queued_by_level.get(level) {
            queued.fetch_add(images, Ordering::AcqRel);
        }
    }

    fn dequeued(&self, level: usize, images: usize) {
        if let Some(queued) = self.queued_by_level.get(level) {
            queued.fetch_sub(images, Ordering::AcqRel);
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, BatchTimes> {
        // Updated by one batch at a time, no step of which panics: use what is there.
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Expected time of a batch of `size` now.
    fn estimate(&self, size: usize) -> Duration {
        self.times().expected(size)
    }

    /// How a job of `images` at priority `level`, whose request arrived then and must be
    /// answered by `deadline`, would fare if admitted `now`.
    fn assess(
        &self,
        images: usize,
        level: usize,
        arrived: Instant,
        deadline: Instant,
        now: Instant,
    ) -> Assessment {
        let margin = self.margin(now);
        let queued_images = self.queued_ahead(level);
        let until_instance_free = self.until_instance_free(now);
        let (planned, own_batch) = {
            let times = self.times();
            let load = Load {
                queued_images,
                until_instance_free,
                instances: self.busy_until.len(),
                max_batch_size: self.max_batch_size,
                slowdown: times.slowdown(),
            };
            (
                latency::expected_completion(&times, load, images),
                times.expected(images),
            )
        };
        let (budget, bound) = self.budget(
            latency::scaled(own_batch, margin),
            now.saturating_duration_since(arrived),
            deadline.saturating_duration_since(now),
        );
        Assessment {
            planned,
            expected: latency::scaled(planned, margin),
            budget,
            bound,
        }
    }

    /// The factor on plans that recent jobs' lateness calls for `now` (after an idle spell,
    /// one that forgot the jobs of a slow one).
    fn margin(&self, now: Instant) -> f64 {
        let margin = self.updated_margin(now);
        self.show_margin(margin);
        margin
    }

    /// The margin after forgetting what is too old `now`, without showing it.
    fn updated_margin(&self, now: Instant) -> f64 {
        self.plan_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(now)
    }

    fn margin_series(&self) -> std::sync::MutexGuard<'_, Option<prometheus::Gauge>> {
        // Only ever replaced whole: a panic elsewhere cannot leave it half-written.
        self.margin_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `margin` to the published series, if any.
    fn show_margin(&self, margin: f64) {
        if let Some(series) = self.margin_series().as_ref() {
            series.set(margin);
        }
    }

    /// `jobs` have their results (or, expired in the queue, their 504) `now`: how long they
    /// took against their plans.
    fn completed(&self, jobs: &[Job], now: Instant) {
        let margin = {
            let mut errors = self
                .plan_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for plan in jobs.iter().filter_map(|job| job.plan) {
                errors.record(
                    plan.expected,
                    now.saturating_duration_since(plan.admitted),
                    now,
                );
            }
            errors.update(now)
        };
        self.show_margin(margin);
    }

    /// What a job may still take, and what bounds it: what is left of the target after the
    /// `spent` since its request arrived, or what remains `to_deadline`, whichever is sooner.
    /// A target below the job's `own_batch` (as admission plans it) cannot be met even when
    /// idle: then only waiting is refused.
    fn budget(
        &self,
        own_batch: Duration,
        spent: Duration,
        to_deadline: Duration,
    ) -> (Duration, &'static str) {
        let target = self.target.saturating_sub(spent).max(own_batch);
        if target < to_deadline {
            (target, TARGET_BOUND)
        } else {
            (to_deadline, DEADLINE_BOUND)
        }
    }

    /// A batch of `images` took `actual`: corrects later estimates. Returns its calibrated
    /// time.
    fn observed(&self, images: usize, actual: Duration) -> Duration {
        self.times().record(images, actual)
    }

    /// Worker `index` started a batch of `images`.
    fn started(&self, index: usize, images: usize, now: Instant) {
        let until = now
            .duration_since(self.epoch)
            .saturating_add(self.estimate(images));
        if let Some(slot) = self.busy_until.get(index) {
            let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX).max(1);
            slot.store(nanos, Ordering::Release);
        }
    }

    /// Worker `index` is idle.
    fn finished(&self, index: usize) {
        if let Some(slot) = self.busy_until.get(index) {
            slot.store(0, Ordering::Release);
        }
    }
}

impl BatcherHandle {
    /// The same batcher with admission control off, for the server's own requests (warm-up,
    /// golden check) that must run whatever the target.
    pub fn without_admission(&self) -> Self {
        Self {
            enforce_admission: false,
            ..self.clone()
        }
    }

    /// Refuses at once, as [`submit`](Self::submit)'s admission control would now, a job of
    /// `images` at priority `level` whose request arrived then and must be answered by
    /// `deadline`. Called before a request's images are decoded, so that what admission
    /// refuses costs no decoding (a 12-megapixel JPEG takes as long to decode as ResNet-50
    /// takes to run an image here); `submit` assesses the job again once it is ready.
    pub fn check_admission(
        &self,
        images: usize,
        level: usize,
        arrived: Instant,
        deadline: Instant,
    ) -> Result<(), BatchError> {
        self.admit(images, level, arrived, deadline, Instant::now())
            .map(|_| ())
    }

    /// With admission control on, how a job would fare if queued `now`, or its refusal
    /// (counted); `None` without admission control.
    fn admit(
        &self,
        images: usize,
        level: usize,
        arrived: Instant,
        deadline: Instant,
        now: Instant,
    ) -> Result<Option<Assessment>, BatchError> {
        let Some(admission) = self.admission.as_ref().filter(|_| self.enforce_admission) else {
            return Ok(None);
        };
        let assessment = admission.assess(images, level, arrived, deadline, now);
        if assessment.expected > assessment.budget {
            self.metrics
                .rejected
                .with_label_values(&[self.model.as_str(), "deadline_unmeetable"])
                .inc();
            return Err(BatchError::WouldMissDeadline {
                expected_ms: assessment.expected.as_millis() as u64,
                budget_ms: assessment.budget.as_millis() as u64,
                bound: assessment.bound,
            });
        }
        Ok(Some(assessment))
    }

    /// Queues a job, or refuses it at once when the queue is full or closed, or (with
    /// admission control) when behind the queue it would finish past its deadline or the
    /// latency target, whichever comes first.
    pub fn submit(&self, mut job: Job) -> Result<(), BatchError> {
        let images = job.images;
        let now = Instant::now();
        let assessment = self.admit(images, job.level, job.arrived, job.deadline, now)?;
        // Only jobs admitted near their bound teach the margin: those with slack to spare
        // (a light load, where plans err most, e.g. two requests arriving at an idle model
        // at once) cannot miss it.
        if let Some(Assessment {
            planned,
            expected,
            budget,
            ..
        }) = assessment
            && budget < expected.saturating_mul(2)
        {
            job.plan = Some(Plan {
                admitted: now,
                expected: planned,
            });
        }
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + images <= self.capacity).then_some(queued + images)
            });
        if admitted.is_err() {
            self.metrics
                .rejected
                .with_label_values(&[self.model.as_str(), "queue_full"])
                .inc();
            return Err(BatchError::QueueFull {
                capacity: self.capacity,
            });
        }
        let level = job.level;
        if let Some(admission) = &self.admission {
            admission.enqueued(level, images);
        }
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics
                    .queue_depth
                    .with_label_values(&[self.model.as_str()])
                    .add(images as i64);
                Ok(())
            }
            Err(error) => {
                self.queued.fetch_sub(images, Ordering::AcqRel);
                if let Some(admission) = &self.admission {
                    admission.dequeued(level, images);
                }
                match error {
                    mpsc::error::TrySendError::Full(_) => {
                        self.metrics
                            .rejected
                            .with_label_values(&[self.model.as_str(), "queue_full"])
                            .inc();
                        Err(BatchError::QueueFull {
                            capacity: self.capacity,
                        })
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(BatchError::ShuttingDown),
                }
            }
        }
    }
}

/// A running batcher: scheduler task plus worker threads.
pub struct Batcher {
    handle: Option<BatcherHandle>,
    admission: Option<Arc<Admission>>,
    scheduler: tokio::task::JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Batcher {
    /// A handle for submitting jobs.
    pub fn handle(&self) -> Option<BatcherHandle> {
        self.handle.clone()
    }

    /// From now on, shows the admission margin in the series of `margins` with `labels`
    /// (set to the current margin at once); a batcher without a latency target has no margin
    /// and creates no series.
    pub fn publish_margin(&self, margins: &prometheus::GaugeVec, labels: &[&str]) {
        if let Some(admission) = &self.admission {
            let series = margins.with_label_values(labels);
            // Held while the margin is read, so that a job answered meanwhile cannot leave
            // the series at a value older than the one it computed.
            let mut published = admission.margin_series();
            series.set(admission.updated_margin(Instant::now()));
            *published = Some(series);
        }
    }

    /// Stops writing the series given to [`Batcher::publish_margin`]: the version was
    /// replaced or unloaded, and what this batcher learns while it drains is not the
    /// version's margin any more.
    pub fn withdraw_margin(&self) {
        if let Some(admission) = &self.admission {
            *admission.margin_series() = None;
        }
    }

    /// Stops accepting jobs, runs what is queued, and joins the workers. Other handles must
    /// be dropped for the scheduler to finish.
    pub async fn shutdown(mut self) {
        self.handle = None;
        if let Err(error) = (&mut self.scheduler).await {
            tracing::error!(%error, "batch scheduler failed");
        }
        let workers = std::mem::take(&mut self.workers);
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                if worker.join().is_err() {
                    tracing::error!("a model worker thread panicked");
                }
            }
        });
        if joined.await.is_err() {
            tracing::error!("cannot join model worker threads");
        }
    }
}

/// Starts the scheduler on the current runtime and one worker thread per backend.
pub fn spawn(
    backends: Vec<Box<dyn Backend>>,
    config: BatcherConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<Batcher> {
    let (jobs_tx, jobs_rx) = mpsc::channel(config.max_queue_size.max(1));
    // Each worker reports itself idle here; one slot per worker suffices.
    let (idle_tx, idle_rx) = mpsc::channel(backends.len().max(1));
    let instances = backends.len().max(1);
    let admission = config
        .admission
        .clone()
        .map(|LatencyTarget { profile, target }| {
            Arc::new(Admission {
                times: Mutex::new(BatchTimes::new(profile, config.limits.max_batch_size)),
                target,
                max_batch_size: config.limits.max_batch_size,
                epoch: Instant::now(),
                busy_until: (0..instances).map(|_| AtomicU64::new(0)).collect(),
                plan_errors: Mutex::new(PlanErrors::default()),
                margin_series: Mutex::new(None),
                queued_by_level: (0..config.limits.priority_levels.max(1))
                    .map(|_| AtomicUsize::new(0))
                    .collect(),
            })
        });
    let queued = Arc::new(AtomicUsize::new(0));
    let queue = Arc::new(Queue {
        policy: Mutex::new(Policy::new(config.limits.clone())),
        queued: queued.clone(),
        admission: admission.clone(),
        metrics: metrics.clone(),
        model: config.model.clone(),
    });
    let mut workers = Vec::new();
    let mut worker_inputs = Vec::new();
    for (index, backend) in backends.into_iter().enumerate() {
        // To worker `index`: at most one batch at a time.
        let (batch_tx, batch_rx) = mpsc::channel::<Vec<Job>>(1);
        let worker = Worker {
            index,
            backend,
            batches: batch_rx,
            idle: idle_tx.clone(),
            queue: queue.clone(),
            admission: admission.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
        };
        workers.push(
            std::thread::Builder::new()
                .name(format!("ort-{}-{index}", config.model))
                .spawn(move || worker.run())?,
        );
        worker_inputs.push(batch_tx);
    }
    let scheduler = Scheduler {
        queue,
        jobs: jobs_rx,
        idle: idle_rx,
        workers: worker_inputs,
        idle_workers: Vec::new(),
        admission: admission.clone(),
        model: config.model.clone(),
    };
    let handle = BatcherHandle {
        jobs: jobs_tx,
        queued,
        capacity: config.max_queue_size,
        metrics: metrics.clone(),
        model: config.model.clone(),
        admission: admission.clone(),
        enforce_admission: true,
    };
    Ok(Batcher {
        handle: Some(handle),
        admission,
        scheduler: tokio::spawn(scheduler.run()),
        workers,
    })
}

/// The queued jobs, shared by the scheduler, which queues them and hands batches to idle
/// workers, and the workers, which take their next batch themselves when they finish one: the
/// model then never waits for the scheduler's turn on the runtime between two batches.
struct Queue {
    policy: Mutex<Policy<Job>>,
    /// Images queued, as [`BatcherHandle::submit`] counts them.
    queued: Arc<AtomicUsize>,
    admission: Option<Arc<Admission>>,
    metrics: Arc<Metrics>,
    model: String,
}

impl Queue {
    fn policy(&self) -> std::sync::MutexGuard<'_, Policy<Job>> {
        // The policy's methods leave it consistent between calls: a panic elsewhere while
        // the lock was held cannot have left it half-updated.
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, job: Job, now: Instant) {
        self.policy().push(job, now);
    }

    fn is_empty(&self) -> bool {
        self.policy().is_empty()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.policy().next_deadline()
    }

    /// Answers the jobs whose deadline passed or whose client left (504, or nobody).
    fn evict(&self, now: Instant) {
        let evicted = self.policy().evict(now);
        for (job, reason) in evicted {
            self.dequeued(std::slice::from_ref(&job));
            let label = match reason {
                Eviction::Expired => "deadline",
                Eviction::Cancelled => "cancelled",
            };
            // A job that ran out of time in the queue ran at least this late against its plan:
            // the margin must learn from it most of all.
            if let (Some(admission), Eviction::Expired) = (&self.admission, reason) {
                admission.completed(std::slice::from_ref(&job), now);
            }
            self.metrics
                .rejected
                .with_label_values(&[self.model.as_str(), label])
                .inc();
            let waited_ms = now.duration_since(job.enqueued).as_millis() as u64;
            // A closed receiver means the client is gone: nobody to tell.
            let _ = job
                .respond
                .send(Err(BatchError::DeadlineExceeded { waited_ms }));
        }
    }

    /// What an idle instance should do at `now`; a batch returned is off the queue's counts.
    fn next(&self, now: Instant) -> Decision<Job> {
        let decision = self.policy().next(now);
        if let Decision::Run(batch) = &decision {
            self.dequeued(batch);
        }
        decision
    }

    fn dequeued(&self, jobs: &[Job]) {
        let images: usize = jobs.iter().map(|job| job.images).sum();
        if let Some(admission) = &self.admission {
            for job in jobs {
                admission.dequeued(job.level, job.images);
            }
        }
        self.queued.fetch_sub(images, Ordering::AcqRel);
        self.metrics
            .queue_depth
            .with_label_values(&[self.model.as_str()])
            .sub(images as i64);
    }
}

struct Scheduler {
    queue: Arc<Queue>,
    /// From request handlers (via [`BatcherHandle::submit`]).
    jobs: mpsc::Receiver<Job>,
    /// From workers that found nothing to run after a batch (and told admission they are
    /// idle), with their index.
    idle: mpsc::Receiver<usize>,
    /// To each worker.
    workers: Vec<mpsc::Sender<Vec<Job>>>,
    idle_workers: Vec<usize>,
    /// Told when batches start and end, when admission control is on.
    admission: Option<Arc<Admission>>,
    model: String,
}

impl Scheduler {
    async fn run(mut self) {
        self.idle_workers = (0..self.workers.len()).rev().collect();
        let mut open = true;
        let mut wake: Option<Instant> = None;
        loop {
            if !open && self.queue.is_empty() {
                break;
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                job = self.jobs.recv(), if open => match job {
                    Some(job) => self.queue.push(job, Instant::now()),
                    None => open = false,
                },
                Some(worker) = self.idle.recv() => self.idle_workers.push(worker),
                () = sleep => {}
            }
            wake = self.dispatch(Instant::now());
        }
        tracing::debug!(model = %self.model, "batch scheduler stopped");
    }

    /// Evicts dead jobs, hands batches to idle workers, and returns when to wake next.
    fn dispatch(&mut self, now: Instant) -> Option<Instant> {
        self.queue.evict(now);
        while let Some(&worker) = self.idle_workers.last() {
            match self.queue.next(now) {
                Decision::Run(batch) => {
                    self.idle_workers.pop();
                    let images: usize = batch.iter().map(|job| job.images).sum();
                    if let Some(admission) = &self.admission {
                        admission.started(worker, images, now);
                    }
                    let sent = match self.workers.get(worker) {
                        Some(sender) => sender.try_send(batch).map_err(|error| error.into_inner()),
                        None => Err(batch),
                    };
                    // Unreachable while the worker lives: it only reports idle with an empty slot.
                    if let Err(batch) = sent {
                        if let Some(admission) = &self.admission {
                            admission.finished(worker);
                        }
                        for job in batch {
                            let _ = job.respond.send(Err(BatchError::ShuttingDown));
                        }
                    }
                }
                Decision::WaitUntil(at) => return Some(at),
                Decision::Idle => return None,
            }
        }
        // All workers busy: wake for the earliest deadline to answer 504 promptly.
        self.queue.next_deadline()
    }
}

struct Worker {
    index: usize,
    backend: Box<dyn Backend>,
    /// From the scheduler.
    batches: mpsc::Receiver<Vec<Job>>,
    /// To the scheduler, after a batch when nothing is ready to run next.
    idle: mpsc::Sender<usize>,
    /// Where the next batch comes from when one is ready as this one ends.
    queue: Arc<Queue>,
    /// Told how long each batch took, when admission control is on.
    admission: Option<Arc<Admission>>,
    config: BatcherConfig,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(mut self) {
        let mut input = Vec::new();
        let mut next = self.batches.blocking_recv();
        while let Some(batch) = next {
            self.run_batch(batch, &mut input);
            next = match self.take_ready() {
                Some(batch) => Some(batch),
                None => {
                    // Idle from now on for admission, however long the scheduler takes to
                    // hear of it.
                    if let Some(admission) = &self.admission {
                        admission.finished(self.index);
                    }
                    match self.idle.blocking_send(self.index) {
                        Ok(()) => self.batches.blocking_recv(),
                        Err(_) => None,
                    }
                }
            };
        }
    }

    /// The batch to run next, when the queue has one ready now.
    fn take_ready(&self) -> Option<Vec<Job>> {
        let now = Instant::now();
        self.queue.evict(now);
        match self.queue.next(now) {
            Decision::Run(batch) => {
                if let Some(admission) = &self.admission {
                    let images = batch.iter().map(|job| job.images).sum();
                    admission.started(self.index, images, now);
                }
                Some(batch)
            }
            Decision::WaitUntil(_) | Decision::Idle => None,
        }
    }

    fn run_batch(&mut self, batch: Vec<Job>, input: &mut Vec<f32>) {
        let started = Instant::now();
        let images: usize = batch.iter().map(|job| job.images).sum();
        for job in &batch {
            self.metrics
                .queue_seconds
                .with_label_values(&[self.config.model.as_str()])
                .observe(started.duration_since(job.enqueued).as_secs_f64());
        }
        let result = self.infer(&batch, input);
        let infer = started.elapsed();
        let model = self.config.model.as_str();
        let calibrated = self
            .admission
            .as_ref()
            .map(|admission| admission.observed(images, infer));
        self.metrics
            .inference_seconds
            .with_label_values(&[model])
            .observe(infer.as_secs_f64());
        self.metrics
            .batch_size
            .with_label_values(&[model])
            .observe(images as f64);
        match result {
            Ok(logits) => self.answer(batch, &logits, started, infer),
            Err(error) if batch.len() > 1 => {
                // One bad input can fail a whole batch: run each job alone, so only the job
                // that fails alone gets the error.
                tracing::warn!(
                    model, %error, jobs = batch.len(),
                    "batch failed; running its requests one at a time"
                );
                for job in batch {
                    let alone = Instant::now();
                    match self.infer(std::slice::from_ref(&job), input) {
                        Ok(logits) => self.answer(vec![job], &logits, started, alone.elapsed()),
                        Err(error) => fail(job, &error, &self.config.model),
                    }
                }
            }
            Err(error) => {
                for job in batch {
                    fail(job, &error, model);
                }
            }
        }
        // The machine's speed over time, for replaying admission offline
        // (`scripts/admission_replay.py`); logged once the batch's jobs have their answers.
        if let Some(calibrated) = calibrated {
            tracing::debug!(
                model = %self.config.model,
                images,
                infer_ms = infer.as_secs_f64() * 1e3,
                calibrated_ms = calibrated.as_secs_f64() * 1e3,
                "batch timed"
            );
        }
    }

    /// Runs `jobs` as one batch (their inputs copied into `input` when there are several) and
    /// checks the output size.
    fn infer(&mut self, jobs: &[Job], input: &mut Vec<f32>) -> Result<Vec<f32>, BackendError> {
        let images: usize = jobs.iter().map(|job| job.images).sum();
        // A batch of one job runs on that job's buffer; only a larger one is assembled.
        let input: &[f32] = match jobs {
            [job] => &job.input,
            _ => {
                input.clear();
                for job in jobs {
                    input.extend_from_slice(&job.input);
                }
                input
            }
        };
        if input.len() != images * self.config.tensor_len {
            return Err(BackendError::Run(format!(
                "batch holds {} values, expected {}",
                input.len(),
                images * self.config.tensor_len
            )));
        }
        let logits = self.backend.infer(input, images)?;
        let classes = self.config.classes;
        if logits.len() != images * classes {
            return Err(BackendError::Run(format!(
                "model returned {} values for {images} images of {classes} classes",
                logits.len()
            )));
        }
        Ok(logits)
    }

    /// Hands each job its rows of `logits`.
    fn answer(&self, jobs: Vec<Job>, logits: &[f32], started: Instant, infer: Duration) {
        if let Some(admission) = &self.admission {
            admission.completed(&jobs, Instant::now());
        }
        let images: usize = jobs.iter().map(|job| job.images).sum();
        self.metrics
            .images
            .with_label_values(&[self.config.model.as_str()])
            .inc_by(images as u64);
        let mut rows = logits.chunks_exact(self.config.classes.max(1));
        for job in jobs {
            let logits: Vec<f32> = rows.by_ref().take(job.images).flatten().copied().collect();
            let output = JobOutput {
                logits,
                queue: started.duration_since(job.enqueued),
                infer,
                batch_size: images,
            };
            let _ = job.respond.send(Ok(output));
        }
    }
}

/// Answers `job` with a backend failure, logged in its request's span.
fn fail(job: Job, error: &BackendError, model: &str) {
    job.span
        .in_scope(|| tracing::error!(model, %error, "inference failed"));
    let _ = job
        .respond
        .send(Err(BatchError::Backend(error.to_string())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(levels: usize, instances: usize) -> Admission {
        let profile = LatencyProfile::new(vec![(1, Duration::from_millis(10))]).unwrap();
        Admission {
            times: Mutex::new(BatchTimes::new(profile, 4)),
            target: Duration::from_millis(100),
            max_batch_size: 4,
            epoch: Instant::now(),
            busy_until: (0..instances).map(|_| AtomicU64::new(0)).collect(),
            plan_errors: Mutex::new(PlanErrors::default()),
            margin_series: Mutex::new(None),
            queued_by_level: (0..levels).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Reports each batch's size, then runs it only when the test says go.
    struct Gated {
        ran: std::sync::mpsc::Sender<usize>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl Backend for Gated {
        fn infer(&mut self, _input: &[f32], batch: usize) -> Result<Vec<f32>, BackendError> {
            let _ = self.ran.send(batch);
            self.go
                .recv()
                .map_err(|_| BackendError::Run("the test ended".into()))?;
            Ok(vec![0.5; batch])
        }
    }

    fn single_image_job(
        deadline: Duration,
    ) -> (Job, oneshot::Receiver<Result<JobOutput, BatchError>>) {
        let (respond, answer) = oneshot::channel();
        let now = Instant::now();
        let job = Job::new(vec![0.0].into(), 1, 0, now, now + deadline, respond);
        (job, answer)
    }

    /// A batcher of one [`Gated`] instance, batches of one image: its handle, what ran, and
    /// the gate.
    fn gated_batcher(
        admission: Option<LatencyTarget>,
    ) -> (
        Batcher,
        BatcherHandle,
        std::sync::mpsc::Receiver<usize>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (ran_tx, ran) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let config = BatcherConfig {
            model: "gated".into(),
            limits: Limits {
                max_batch_size: 1,
                max_queue_delay: Duration::ZERO,
                preferred_batch_sizes: vec![],
                priority_levels: 1,
            },
            max_queue_size: 8,
            tensor_len: 1,
            classes: 1,
            admission,
        };
        let backend = Gated {
            ran: ran_tx,
            go: go_rx,
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        let batcher = spawn(vec![Box::new(backend)], config, metrics).unwrap();
        let handle = batcher.handle().unwrap();
        (batcher, handle, ran, go)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_runs_the_queued_batches_while_the_scheduler_cannot() {
        let (batcher, handle, ran, go) = gated_batcher(None);
        let mut answers = Vec::new();
        let (job, answer) = single_image_job(Duration::from_secs(60));
        handle.submit(job).unwrap();
        answers.push(answer);
        // The first job is running (and held there): the next two queue behind it.
        while ran.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..2 {
            let (job, answer) = single_image_job(Duration::from_secs(60));
            handle.submit(job).unwrap();
            answers.push(answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Now hold this runtime's only thread, and with it the scheduler task: the worker
        // must take the two queued jobs itself.
        for _ in 0..3 {
            go.send(()).unwrap();
        }
        for _ in 0..2 {
            let batch = ran.recv_timeout(Duration::from_secs(10));
            assert_eq!(batch, Ok(1), "the worker waited for the scheduler");
        }
        for answer in answers {
            let output = answer.await.unwrap().unwrap();
            assert_eq!(output.logits, vec![0.5]);
        }
        drop(handle);
        batcher.shutdown().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_does_not_run_a_job_past_its_deadline() {
        let (batcher, handle, ran, go) = gated_batcher(None);
        let (first, first_answer) = single_image_job(Duration::from_secs(60));
        handle.submit(first).unwrap();
        while ran.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (late, late_answer) = single_image_job(Duration::from_millis(30));
        handle.submit(late).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Hold the scheduler past the second job's deadline; then the first batch ends, and
        // its worker, taking its next batch itself, must answer the second 504 instead of
        // running it. (A scheduler that hands out every batch passes too: it evicts first.)
        std::thread::sleep(Duration::from_millis(60));
        go.send(()).unwrap();
        assert_eq!(
            ran.recv_timeout(Duration::from_millis(300)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "the late job ran"
        );
        assert!(first_answer.await.unwrap().is_ok());
        let late = late_answer.await.unwrap();
        assert!(
            matches!(late, Err(BatchError::DeadlineExceeded { .. })),
            "{late:?}"
        );
        drop(handle);
        batcher.shutdown().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_batcher_in_service_shows_its_margin() {
        let profile = LatencyProfile::new(vec![(1, Duration::from_millis(10))]).unwrap();
        let target = Duration::from_secs(10);
        let (batcher, handle, _ran, go) = gated_batcher(Some(LatencyTarget { profile, target }));
        let margins =
            prometheus::GaugeVec::new(prometheus::Opts::new("margin", "test"), &["v"]).unwrap();
        let series = margins.with_label_values(&["1"]);
        let mut answers = Vec::new();
        let mut submit = || {
            let (job, answer) = single_image_job(Duration::from_secs(60));
            handle.submit(job).unwrap();
            answers.push(answer);
        };
        // Warming up, before the registry puts it in service: admission leaves the series.
        submit();
        batcher.publish_margin(&margins, &["1"]);
        assert_eq!(series.get(), 1.0);
        series.set(0.0);
        submit();
        assert_eq!(series.get(), 1.0, "admission did not show the margin");
        // Replaced by a reload: neither admission nor the answers of its drain show it.
        batcher.withdraw_margin();
        series.set(0.0);
        submit();
        for _ in 0..3 {
            go.send(()).unwrap();
        }
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        assert_eq!(series.get(), 0.0);
        drop(handle);
        batcher.shutdown().await;
    }

    #[test]
    fn a_job_waits_only_behind_its_own_level_and_those_above() {
        let admission = admission(3, 1);
        admission.enqueued(2, 5);
        admission.enqueued(1, 3);
        assert_eq!(admission.queued_ahead(0), 0);
        assert_eq!(admission.queued_ahead(1), 3);
        assert_eq!(admission.queued_ahead(2), 8);
        admission.dequeued(2, 5);
        assert_eq!(admission.queued_ahead(2), 3);
        // A level past the configured ones counts everything and is not itself counted.
        admission.enqueued(7, 1);
        assert_eq!(admission.queued_ahead(7), 3);
    }

    #[test]
    fn the_target_counts_from_the_request_s_arrival() {
        // Target 100 ms, 10 ms per image.
        let admission = admission(1, 1);
        let far = Duration::from_secs(10);
        let target = "is the model's latency target";
        let batch = Duration::from_millis(10);
        assert_eq!(
            admission.budget(batch, Duration::ZERO, far),
            (Duration::from_millis(100), target)
        );
        // 60 ms spent receiving and decoding leave 40.
        assert_eq!(
            admission.budget(batch, Duration::from_millis(60), far),
            (Duration::from_millis(40), target)
        );
        // Past the target, the job's own batch is still allowed: only waiting is refused.
        assert_eq!(
            admission.budget(2 * batch, Duration::from_millis(150), far),
            (Duration::from_millis(20), target)
        );
        // A nearer deadline bounds it instead.
        assert_eq!(
            admission.budget(batch, Duration::from_millis(10), Duration::from_millis(30)),
            (Duration::from_millis(30), "remain to the deadline")
        );
    }

    #[test]
    fn jobs_that_ran_past_their_plan_widen_the_margin() {
        let admission = admission(1, 1);
        let admitted = Instant::now();
        let planned = |expected_ms: u64| {
            let (respond, _) = oneshot::channel();
            let mut job = Job::new(
                vec![0.0].into(),
                1,
                0,
                admitted,
                admitted + Duration::from_secs(1),
                respond,
            );
            job.plan = Some(Plan {
                admitted,
                expected: Duration::from_millis(expected_ms),
            });
            job
        };
        let (respond, _) = oneshot::channel();
        let unplanned = Job::new(vec![0.0].into(), 1, 0, admitted, admitted, respond);
        // Planned at 40 ms, done at 60: half as long again; the server's own job counts not.
        let mut jobs: Vec<Job> = (0..latency::PLAN_MIN_JOBS).map(|_| planned(40)).collect();
        jobs.push(unplanned);
        admission.completed(&jobs, admitted + Duration::from_millis(60));
        let now = admitted + Duration::from_millis(60);
        assert!((admission.margin(now) - 1.5).abs() < 1e-9);
        // An idle model: one batch of 10 ms, planned at 15. A request that spent 150 ms of
        // its 100 ms target arriving may still take its own batch, as admission plans it.
        let assessed = admission.assess(
            1,
            0,
            now - Duration::from_millis(150),
            now + Duration::from_secs(10),
            now,
        );
        assert_eq!(assessed.planned, Duration::from_millis(10));
        assert_eq!(assessed.expected, Duration::from_millis(15));
        assert_eq!(assessed.budget, Duration::from_millis(15));
        // Once the late jobs are forgotten, an idle model's margin is back to 1.
        let later = admitted + latency::PLAN_MEMORY + Duration::from_secs(1);
        assert_eq!(admission.margin(later), 1.0);
    }

    #[test]
    fn running_batches_and_the_learnt_batch_times_shape_the_estimate() {
        let admission = admission(1, 2);
        let now = Instant::now();
        assert_eq!(admission.until_instance_free(now), None);
        admission.started(0, 1, now);
        // The other instance is idle.
        assert_eq!(admission.until_instance_free(now), None);
        admission.started(1, 1, now);
        assert_eq!(
            admission.until_instance_free(now + Duration::from_millis(4)),
            Some(Duration::from_millis(6))
        );
        // Both batches late: still busy.
        assert_eq!(
            admission.until_instance_free(now + Duration::from_millis(50)),
            Some(Duration::ZERO)
        );
        admission.finished(0);
        assert_eq!(admission.until_instance_free(now), None);
        // Batches twice as slow as calibrated, for a while: estimates follow.
        for _ in 0..200 {
            admission.observed(1, Duration::from_millis(20));
        }
        let estimate = admission.estimate(1).as_secs_f64();
        assert!((estimate - 0.020).abs() < 1e-4, "{estimate}");
    }
}
