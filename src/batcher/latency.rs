//! What a model version's batches cost, measured at load time, and the two decisions made
//! from it (`--target-p99-ms`): the batch size that serves the most images per second while
//! keeping the p99 within the target, and whether a new request can still finish within its
//! bound (deadline or target) behind the work queued ahead of it.
//! Pure functions: no clock reads (the time is passed in), no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far apart two batch sizes' measured images/s can be and still be the same speed: batch
/// times here vary by about ±3 % from run to run.
pub const THROUGHPUT_NOISE: f64 = 0.03;

/// Inference time by batch size, measured on one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyProfile {
    /// `(batch size, time)`, sorted by size, sizes distinct.
    points: Vec<(usize, Duration)>,
}

impl LatencyProfile {
    /// A profile from measurements; `None` when there are none.
    pub fn new(mut points: Vec<(usize, Duration)>) -> Option<Self> {
        points.retain(|(size, _)| *size > 0);
        points.sort_by_key(|(size, _)| *size);
        points.dedup_by_key(|(size, _)| *size);
        (!points.is_empty()).then_some(Self { points })
    }

    /// The measurements.
    pub fn points(&self) -> &[(usize, Duration)] {
        &self.points
    }

    /// Estimated time of a batch of `size`: linear between measured sizes, and beyond the
    /// largest measured size the largest batch's time per image.
    pub fn estimate(&self, size: usize) -> Duration {
        let size = size.max(1);
        let (first, last) = (self.points[0], self.points[self.points.len() - 1]);
        if size <= first.0 {
            return first.1;
        }
        if size >= last.0 {
            return last.1.mul_f64(size as f64 / last.0 as f64);
        }
        let upper = self
            .points
            .iter()
            .position(|(measured, _)| *measured >= size)
            .unwrap_or(self.points.len() - 1);
        let (low, high) = (self.points[upper - 1], self.points[upper]);
        let fraction = (size - low.0) as f64 / (high.0 - low.0) as f64;
        low.1 + (high.1.saturating_sub(low.1)).mul_f64(fraction)
    }

    /// The batch size up to `limit` that serves the most images per second among those whose
    /// p99 stays within `target` (a request may wait for a batch that has just started and
    /// then run in the next, so the worst case is two batch times). The candidates are the
    /// measured sizes and the largest size that fits (estimated between measurements); of
    /// those within [`THROUGHPUT_NOISE`] of the fastest, the smallest, since a gain smaller
    /// than the measurements' noise does not pay for the latency a larger batch adds. Beyond
    /// the throughput knee a larger batch only adds latency: on 2 CPU cores a ResNet-50 serves
    /// about as many images per second at batch 2 as at 4–32. At least 1, even when a single
    /// image already misses the target.
    pub fn batch_size_for(&self, target: Duration, limit: usize) -> usize {
        let limit = limit.max(1);
        let fits = |size: usize| size <= limit && self.estimate(size) * 2 <= target;
        let throughput = |size: usize| size as f64 / self.estimate(size).as_secs_f64().max(1e-9);
        let largest = (1..=limit).rev().find(|&size| fits(size));
        let mut candidates: Vec<usize> = self
            .points
            .iter()
            .map(|(size, _)| *size)
            .filter(|&size| fits(size))
            .chain(largest)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let fastest = candidates
            .iter()
            .map(|&size| throughput(size))
            .fold(0.0, f64::max);
        candidates
            .into_iter()
            .find(|&size| throughput(size) >= fastest * (1.0 - THROUGHPUT_NOISE))
            .unwrap_or(1)
    }
}

/// Timed runs per batch size in calibration (odd: the median is one of them).
pub const CALIBRATION_RUNS: usize = 3;

/// Calibration: times batches of each of `sizes` (ascending) with `run`, which runs a batch of
/// that size and returns how long it took. Each size is run once untimed (lazy
/// initialisation) and once timed, in turn, stopping after the first whose timed run × 2
/// exceeds `target` (larger ones cannot meet it either); then the sizes reached are timed in
/// rounds, one size after another, up to [`CALIBRATION_RUNS`] runs each, and each size's
/// median is its time; sizes past the first whose median × 2 exceeds `target` are dropped. In
/// rounds, a slow moment of the machine slows every size alike, which the [`Slowdown`]
/// corrects; timing one size's runs back to back let one moment slow that size alone, and the
/// sizes' proportions decide the batch size.
pub fn measure_batch_times<E>(
    sizes: &[usize],
    target: Duration,
    mut run: impl FnMut(usize) -> Result<Duration, E>,
) -> Result<Vec<(usize, Duration)>, E> {
    // Waiting for a batch that just started, then running its own, a request would miss it.
    let misses_target = |time: Duration| time * 2 > target;
    let mut times: Vec<(usize, Vec<Duration>)> = Vec::with_capacity(sizes.len());
    for &size in sizes {
        run(size)?;
        let time = run(size)?;
        times.push((size, vec![time]));
        if misses_target(time) {
            break;
        }
    }
    for _ in 1..CALIBRATION_RUNS {
        for (size, runs) in &mut times {
            runs.push(run(*size)?);
        }
    }
    let mut points = Vec::with_capacity(times.len());
    for (size, mut runs) in times {
        runs.sort_unstable();
        let median = runs[runs.len() / 2];
        points.push((size, median));
        if misses_target(median) {
            break;
        }
    }
    Ok(points)
}

/// What admission control knows about a batcher at the moment a request arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Images queued ahead: at the job's priority level and above (those run first).
    pub queued_images: usize,
    /// `None` when an instance is idle; otherwise the time until the first running batch is
    /// expected to finish (zero once it runs past that: it is late, not done).
    pub until_instance_free: Option<Duration>,
    /// Model instances (workers).
    pub instances: usize,
    /// Largest batch.
    pub max_batch_size: usize,
    /// Factor on the usual batch times of the batches yet to start ([`BatchTimes::slowdown`]).
    pub slowdown: f64,
}

/// Expected time until a new job of `images` images has its result, given `load`: the first
/// instance to free up takes the queue ahead, which runs in full batches across the
/// instances, then the job's own batch. That batch runs at once and alone only on an idle
/// model; otherwise jobs that arrive while it waits fill it up (batching takes all that
/// waits), so it is counted as full. Batches yet to start are scaled by `load.slowdown`; the
/// running batch's end was estimated when it started.
pub fn expected_completion(times: &BatchTimes, load: Load, images: usize) -> Duration {
    let max = load.max_batch_size.max(1);
    let instances = load.instances.max(1);
    let total = load.queued_images.saturating_add(images.max(1));
    let per_round = max.saturating_mul(instances);
    let full_rounds = u32::try_from((total - 1) / per_round).unwrap_or(u32::MAX);
    let idle = load.queued_images == 0 && load.until_instance_free.is_none();
    let own_batch = if idle { images.clamp(1, max) } else { max };
    load.until_instance_free
        .unwrap_or_default()
        .saturating_add(scaled(times.estimate(max), load.slowdown).saturating_mul(full_rounds))
        .saturating_add(scaled(times.estimate(own_batch), load.slowdown))
}

/// `time × factor`, saturating at `Duration::MAX` (and zero for a factor that is not a
/// positive number) instead of panicking.
pub fn scaled(time: Duration, factor: f64) -> Duration {
    match Duration::try_from_secs_f64(time.as_secs_f64() * factor) {
        Ok(scaled) => scaled,
        Err(_) if factor > 0.0 => Duration::MAX,
        Err(_) => Duration::ZERO,
    }
}

/// How far [`Slowdown`] moves towards what each batch showed.
///
/// Half: a shared machine's speed changes in spells (on the ninth and tenth sessions' machine,
/// every batch ran at twice its calibrated time for a second or so at a time), and the next
/// batches run like the last two, not like the last twenty. Replaying recorded batch times
/// (`scripts/admission_replay.py`), moving a tenth of the way let more than twice as many
/// 20 s windows of 80 % load miss the p99 target, and refused more, than half the way.
pub const SLOWDOWN_WEIGHT: f64 = 0.5;

/// How much slower batches run now than usual ([`BatchTimes::estimate`]), learnt from every
/// batch: the ratio of actual to usual time, moved [`SLOWDOWN_WEIGHT`] of the way to what each
/// batch showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slowdown {
    mean: f64,
}

impl Default for Slowdown {
    fn default() -> Self {
        Self { mean: 1.0 }
    }
}

impl Slowdown {
    /// A factor of `mean`, within the bounds a slowdown is believed: 0.5 to 4.
    fn bounded(mean: f64) -> Self {
        Self {
            mean: mean.clamp(0.5, 4.0),
        }
    }

    /// After a batch estimated at `estimated` took `actual`.
    pub fn updated(self, estimated: Duration, actual: Duration) -> Self {
        if estimated.is_zero() {
            return self;
        }
        let observed = actual.as_secs_f64() / estimated.as_secs_f64();
        Self::bounded(self.mean + (observed - self.mean) * SLOWDOWN_WEIGHT)
    }

    /// The expected factor.
    pub fn mean(self) -> f64 {
        self.mean
    }

    /// The same speed against usual times that changed by `1 / factor`.
    fn rescaled(self, factor: f64) -> Self {
        Self::bounded(self.mean * factor)
    }
}

/// Batches of one size whose times [`BatchTimes`] remembers: about 5 s of ResNet-50 at batch 1
/// on 2 CPU cores, 11 s at batch 2, so that a slow spell of a second or two (which [`Slowdown`]
/// follows) does not move the median. A faster model remembers a shorter time, and a long
/// spell moves its corrections too; plans stay continuous as they change (see
/// [`BatchTimes::record`]).
pub const SIZE_MEMORY: usize = 127;

/// Batches of a size that [`BatchTimes`] needs before it corrects that size's calibration.
pub const SIZE_MIN_BATCHES: usize = 5;

/// What batches take as the model runs them: the calibration, each batch size corrected by the
/// median of how its last [`SIZE_MEMORY`] batches ran against it, and a [`Slowdown`] relative
/// to that. The calibration is three runs per size at start, and one slow moment there (batch
/// 1 measured at 74 ms where it ran in 42) stays in it for the model's life: the slowdown,
/// one factor for all sizes, then swung between the sizes' errors with every batch, and plans
/// erred so much that the margin learnt to refuse half the load a model could serve.
#[derive(Debug, Clone)]
pub struct BatchTimes {
    calibration: LatencyProfile,
    /// Per batch size, `sizes[size - 1]` up to the largest batch: recent ratios of actual to
    /// calibrated time, oldest first.
    sizes: Vec<VecDeque<f64>>,
    /// Per batch size: the median of its ratios, once it has [`SIZE_MIN_BATCHES`].
    corrections: Vec<Option<f64>>,
    slowdown: Slowdown,
    /// Reused to find medians.
    scratch: Vec<f64>,
}

impl BatchTimes {
    /// Batch times as calibrated, for batches of up to `max_batch_size` images.
    pub fn new(calibration: LatencyProfile, max_batch_size: usize) -> Self {
        let sizes = max_batch_size.max(1);
        Self {
            calibration,
            sizes: vec![VecDeque::new(); sizes],
            corrections: vec![None; sizes],
            slowdown: Slowdown::default(),
            scratch: Vec::with_capacity(SIZE_MEMORY),
        }
    }

    /// Where a batch of `size` is kept (sizes past the largest batch with the largest).
    fn index(&self, size: usize) -> usize {
        size.clamp(1, self.sizes.len()) - 1
    }

    /// The factor on the calibration of `size`: its own correction, else that of the nearest
    /// size that has one (the smaller of two as near; batches of every size slow down alike
    /// under load), else 1.
    fn correction(&self, size: usize) -> f64 {
        let index = self.index(size);
        (0..self.corrections.len())
            .flat_map(|distance| [index.checked_sub(distance), index.checked_add(distance)])
            .flatten()
            .find_map(|near| self.corrections.get(near).copied().flatten())
            .unwrap_or(1.0)
    }

    /// Usual time of a batch of `size`: its calibration as corrected by recent batches.
    pub fn estimate(&self, size: usize) -> Duration {
        scaled(self.calibration.estimate(size), self.correction(size))
    }

    /// Factor on [`BatchTimes::estimate`] for the batches starting now.
    pub fn slowdown(&self) -> f64 {
        self.slowdown.mean()
    }

    /// Expected time of a batch of `size` starting now.
    pub fn expected(&self, size: usize) -> Duration {
        scaled(self.estimate(size), self.slowdown())
    }

    /// A batch of `size` took `actual`: learns from it, and returns its calibrated time. When
    /// the size's correction changes, the slowdown is rescaled so that the batch's expected
    /// time does not jump: the slowdown had already learnt what the correction now holds, and
    /// plans would otherwise count it twice until the slowdown unlearnt it.
    pub fn record(&mut self, size: usize, actual: Duration) -> Duration {
        let calibrated = self.calibration.estimate(size);
        if calibrated.is_zero() {
            return calibrated;
        }
        let before = self.correction(size);
        self.slowdown = self.slowdown.updated(scaled(calibrated, before), actual);
        let index = self.index(size);
        let ratios = &mut self.sizes[index];
        if ratios.len() == SIZE_MEMORY {
            ratios.pop_front();
        }
        ratios.push_back((actual.as_secs_f64() / calibrated.as_secs_f64()).clamp(0.1, 10.0));
        if ratios.len() >= SIZE_MIN_BATCHES {
            self.scratch.clear();
            self.scratch.extend(ratios.iter().copied());
            let middle = self.scratch.len() / 2;
            let (_, median, _) = self.scratch.select_nth_unstable_by(middle, f64::total_cmp);
            self.corrections[index] = Some(*median);
        }
        self.slowdown = self.slowdown.rescaled(before / self.correction(size));
        calibrated
    }
}

/// Admitted jobs remembered by [`PlanErrors`], at most.
pub const PLAN_WINDOW: usize = 256;

/// How long [`PlanErrors`] remembers a job: a slow spell stops widening the margin this long
/// after it ends.
pub const PLAN_MEMORY: Duration = Duration::from_secs(10);

/// Jobs [`PlanErrors`] needs to remember before the margin moves from 1.
pub const PLAN_MIN_JOBS: usize = 32;

/// The share of recent jobs whose time the margin covers: the target is a p99.
pub const PLAN_QUANTILE: f64 = 0.99;

/// How far admitted jobs' completions ran from the plans made when they were admitted, and the
/// margin admission puts on its plans: the [`PLAN_QUANTILE`] of the ratios of actual to
/// planned time of the last [`PLAN_WINDOW`] jobs within [`PLAN_MEMORY`]. A job is admitted
/// when margin × plan fits its budget, so it misses its bound only when its ratio exceeds the
/// margin: if the next jobs err like the last few hundred, that is 1 % of them. Batch times
/// alone do not tell this: a slow spell delays every job queued behind it, so jobs run late
/// together, and planning each batch at its mean time plus two deviations planned too little
/// (served p99 2–12 % past the target).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanErrors {
    /// `(when recorded, actual / planned)`, oldest first.
    ratios: VecDeque<(Instant, f64)>,
    /// Ratios recorded or forgotten since `margin` was last computed.
    unsorted: usize,
    /// Whether `margin` is the default, not computed from the window.
    default_margin: bool,
    margin: f64,
}

impl Default for PlanErrors {
    fn default() -> Self {
        Self {
            ratios: VecDeque::with_capacity(PLAN_WINDOW),
            unsorted: 0,
            default_margin: true,
            margin: 1.0,
        }
    }
}

impl PlanErrors {
    /// A job planned at `planned` took `actual` from its admission to its result, `now`.
    pub fn record(&mut self, planned: Duration, actual: Duration, now: Instant) {
        if planned.is_zero() {
            return;
        }
        let ratio = (actual.as_secs_f64() / planned.as_secs_f64()).clamp(0.1, 10.0);
        if self.ratios.len() == PLAN_WINDOW {
            self.ratios.pop_front();
        }
        self.ratios.push_back((now, ratio));
        self.unsorted += 1;
    }

    /// Forgets jobs older than [`PLAN_MEMORY`] and returns the margin, recomputed once sixteen
    /// jobs were recorded or forgotten since (a selection over the window costs a few
    /// microseconds, and admission asks for the margin per request); 1 while fewer than
    /// [`PLAN_MIN_JOBS`] are remembered.
    pub fn update(&mut self, now: Instant) -> f64 {
        let remembered = self.ratios.len();
        while let Some((at, _)) = self.ratios.front() {
            if now.saturating_duration_since(*at) <= PLAN_MEMORY {
                break;
            }
            self.ratios.pop_front();
        }
        self.unsorted += remembered - self.ratios.len();
        if self.ratios.len() < PLAN_MIN_JOBS {
            self.margin = 1.0;
            self.default_margin = true;
        } else if self.unsorted >= 16 || self.default_margin {
            let mut ratios: Vec<f64> = self.ratios.iter().map(|(_, ratio)| *ratio).collect();
            let index = quantile_index(ratios.len());
            let (_, quantile, _) = ratios.select_nth_unstable_by(index, f64::total_cmp);
            self.margin = quantile.clamp(0.5, 4.0);
            self.default_margin = false;
            self.unsorted = 0;
        }
        self.margin
    }

    /// The factor on plans.
    pub fn margin(&self) -> f64 {
        self.margin
    }
}

/// Where in `n ≥ 2` sorted ratios the margin is: the nearest-rank [`PLAN_QUANTILE`], so that at
/// most 1 % lie above it, but never the largest, so that one odd job does not set the margin
/// alone (below a hundred jobs, the second largest).
fn quantile_index(n: usize) -> usize {
    let rank = (n as f64 * PLAN_QUANTILE).ceil() as usize;
    rank.saturating_sub(1).min(n.saturating_sub(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// 2 ms + 1 ms per image, measured at 1, 4 and 8.
    fn profile() -> LatencyProfile {
        LatencyProfile::new(vec![(8, ms(10)), (1, ms(3)), (4, ms(6)), (4, ms(7))]).unwrap()
    }

    /// Whether two durations are within a microsecond (float ratios round).
    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(1)
    }

    /// [`profile`]'s batches up to 8 images, none run yet.
    fn times() -> BatchTimes {
        BatchTimes::new(profile(), 8)
    }

    #[test]
    fn estimates_interpolate_and_extrapolate() {
        let profile = profile();
        assert_eq!(profile.points().len(), 3);
        assert_eq!(profile.estimate(0), ms(3));
        assert_eq!(profile.estimate(1), ms(3));
        assert_eq!(profile.estimate(2), ms(4));
        assert_eq!(profile.estimate(4), ms(6));
        assert_eq!(profile.estimate(6), ms(8));
        assert_eq!(profile.estimate(16), ms(20));
        assert!(LatencyProfile::new(vec![]).is_none());
        assert!(LatencyProfile::new(vec![(0, ms(1))]).is_none());
    }

    #[test]
    fn the_fastest_batch_within_half_the_target_is_chosen() {
        let profile = profile();
        // 2 × t(b) ≤ 20 ms → t(b) ≤ 10 ms → b = 8.
        assert_eq!(profile.batch_size_for(ms(20), 32), 8);
        assert_eq!(profile.batch_size_for(ms(20), 4), 4);
        // t(4) = 6 ms: 12 ms allows 4; t(5) = 7 ms → 14 ms > 13 ms.
        assert_eq!(profile.batch_size_for(ms(13), 32), 4);
        // Unreachable targets still serve one image at a time.
        assert_eq!(profile.batch_size_for(ms(1), 32), 1);
    }

    #[test]
    fn batches_past_the_throughput_knee_are_not_chosen() {
        // 100 images/s at 1, 200 at 4, 133 at 8 and beyond: 4 is the knee.
        let knee = LatencyProfile::new(vec![(1, ms(10)), (4, ms(20)), (8, ms(60))]).unwrap();
        assert_eq!(knee.batch_size_for(ms(1000), 32), 4);
        // A target that excludes the knee takes the fastest size it allows.
        assert_eq!(knee.batch_size_for(ms(38), 32), 3);
        // No gain from batching at all: the smallest size.
        let flat = LatencyProfile::new(vec![(1, ms(10)), (2, ms(20))]).unwrap();
        assert_eq!(flat.batch_size_for(ms(1000), 32), 1);
    }

    #[test]
    fn a_gain_within_the_noise_does_not_buy_a_larger_batch() {
        // 100, 105.3 and 108.1 images/s: 4 is 2.7 % faster than 2, within the noise.
        let close = LatencyProfile::new(vec![(1, ms(10)), (2, ms(19)), (4, ms(37))]).unwrap();
        assert_eq!(close.batch_size_for(ms(1000), 4), 2);
        // 133 images/s at 4 is 9 % faster than the 122 interpolated at 3: worth it.
        let clear = LatencyProfile::new(vec![(1, ms(10)), (2, ms(19)), (4, ms(30))]).unwrap();
        assert_eq!(clear.batch_size_for(ms(1000), 4), 4);
    }

    #[test]
    fn the_slowdown_follows_what_batches_show() {
        let mut slowdown = Slowdown::default();
        for _ in 0..100 {
            slowdown = slowdown.updated(ms(100), ms(120));
        }
        assert!((slowdown.mean() - 1.2).abs() < 1e-3, "{slowdown:?}");
        // One odd batch moves the mean half way; the next normal one, half way back.
        let odd = Slowdown::default().updated(ms(100), ms(300));
        assert!((odd.mean() - 2.0).abs() < 1e-9);
        assert!((odd.updated(ms(100), ms(100)).mean() - 1.5).abs() < 1e-9);
        // Bounded, and nothing learnt from a zero estimate.
        let mut slow = Slowdown::default();
        for _ in 0..100 {
            slow = slow.updated(ms(1), ms(1000));
        }
        assert_eq!(slow.mean(), 4.0);
        assert_eq!(
            Slowdown::default().updated(Duration::ZERO, ms(5)),
            Slowdown::default()
        );
    }

    #[test]
    fn the_margin_covers_all_but_the_slowest_percent_of_jobs() {
        let (mut errors, now) = (PlanErrors::default(), Instant::now());
        // Jobs that took 80 % to 130 % of their plan, all different: the margin is near the top.
        for round in 0..2000u64 {
            let micros = 80_000 + (round * 7919) % 50_000;
            errors.record(ms(100), Duration::from_micros(micros), now);
            errors.update(now);
        }
        let margin = errors.update(now);
        assert!((1.25..=1.30).contains(&margin), "{margin}");
        // At most 1 % of the window ran later than the margin.
        let later = errors.ratios.iter().filter(|(_, ratio)| *ratio > margin);
        assert!(
            later.count() as f64 <= (1.0 - PLAN_QUANTILE) * PLAN_WINDOW as f64,
            "{errors:?}"
        );
    }

    #[test]
    fn the_quantile_leaves_at_most_one_percent_above_and_never_is_the_largest() {
        assert_eq!(quantile_index(2), 0);
        assert_eq!(quantile_index(PLAN_MIN_JOBS), PLAN_MIN_JOBS - 2);
        assert_eq!(quantile_index(100), 98);
        assert_eq!(quantile_index(150), 148);
        assert_eq!(quantile_index(200), 197);
        assert_eq!(quantile_index(PLAN_WINDOW), 253);
        for n in 2..=PLAN_WINDOW {
            let above = n - 1 - quantile_index(n);
            assert!(above >= 1, "{n}");
            assert!(
                above as f64 <= (n as f64 * 0.01).max(1.0),
                "{n}: {above} above"
            );
        }
    }

    /// Records `count` jobs planned at `planned_ms` that took `actual_ms`, at `at`.
    fn record_many(
        errors: &mut PlanErrors,
        count: usize,
        planned_ms: u64,
        actual_ms: u64,
        at: Instant,
    ) {
        for _ in 0..count {
            errors.record(ms(planned_ms), ms(actual_ms), at);
        }
    }

    #[test]
    fn a_late_spell_raises_the_margin_until_it_is_forgotten() {
        let (mut errors, start) = (PlanErrors::default(), Instant::now());
        record_many(&mut errors, PLAN_WINDOW, 100, 90, start);
        assert!((errors.update(start) - 0.9).abs() < 1e-9);
        // Sixteen jobs behind slow batches ran 40 % late: more than 1 % of the window.
        record_many(&mut errors, 16, 100, 140, start);
        assert!((errors.update(start) - 1.4).abs() < 1e-9);
        // A window of later jobs pushes them out...
        record_many(&mut errors, PLAN_WINDOW, 100, 90, start);
        assert!((errors.update(start) - 0.9).abs() < 1e-9);
        // ...and so does time, when few jobs come: the margin is 1 until enough are seen.
        record_many(&mut errors, 16, 100, 140, start);
        assert!((errors.update(start) - 1.4).abs() < 1e-9);
        let later = start + PLAN_MEMORY + ms(1);
        assert_eq!(errors.update(later), 1.0);
        record_many(&mut errors, PLAN_MIN_JOBS, 100, 90, later);
        assert!((errors.update(later) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn forgetting_counts_toward_the_next_recomputation() {
        let (mut errors, start) = (PlanErrors::default(), Instant::now());
        record_many(&mut errors, 15, 100, 300, start);
        let later = start + ms(1000);
        record_many(&mut errors, 100, 100, 100, later);
        assert!((errors.update(later) - 3.0).abs() < 1e-9);
        // The fifteen slow jobs are forgotten: fewer than sixteen changes, no recomputation...
        let forgotten = start + PLAN_MEMORY + ms(1);
        assert!((errors.update(forgotten) - 3.0).abs() < 1e-9);
        // ...until one more job makes sixteen.
        errors.record(ms(100), ms(100), forgotten);
        assert!((errors.update(forgotten) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_margin_waits_for_enough_jobs_and_moves_in_steps() {
        let (mut errors, now) = (PlanErrors::default(), Instant::now());
        // Too few jobs to say anything; nothing learnt from a zero plan.
        record_many(&mut errors, PLAN_MIN_JOBS - 1, 100, 150, now);
        errors.record(Duration::ZERO, ms(1), now);
        assert_eq!(errors.update(now), 1.0);
        errors.record(ms(100), ms(150), now);
        assert!((errors.update(now) - 1.5).abs() < 1e-9);
        // One odd job among few does not set the margin; two do. Absurd ratios are bounded.
        record_many(&mut errors, 15, 100, 150, now);
        errors.record(ms(1), ms(1000), now);
        assert!((errors.update(now) - 1.5).abs() < 1e-9);
        record_many(&mut errors, 15, 100, 150, now);
        errors.record(ms(1), ms(1000), now);
        assert_eq!(errors.update(now), 4.0);
        // Below the bound too; and recomputed only every sixteenth job.
        let mut fast = PlanErrors::default();
        record_many(&mut fast, PLAN_MIN_JOBS, 100, 1, now);
        assert_eq!(fast.update(now), 0.5);
        record_many(&mut fast, 15, 100, 300, now);
        assert_eq!(fast.update(now), 0.5);
        fast.record(ms(100), ms(300), now);
        assert!((fast.update(now) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn scaling_saturates_instead_of_panicking() {
        assert_eq!(scaled(ms(10), 1.5), ms(15));
        assert_eq!(scaled(Duration::MAX, 4.0), Duration::MAX);
        assert_eq!(scaled(ms(10), f64::INFINITY), Duration::MAX);
        assert_eq!(scaled(ms(10), f64::NAN), Duration::ZERO);
        assert_eq!(scaled(ms(10), -1.0), Duration::ZERO);
    }

    #[test]
    fn absurd_loads_saturate_instead_of_overflowing() {
        let load = Load {
            queued_images: usize::MAX,
            until_instance_free: Some(Duration::MAX),
            instances: usize::MAX,
            max_batch_size: usize::MAX,
            slowdown: f64::MAX,
        };
        assert_eq!(
            expected_completion(&times(), load, usize::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn an_idle_model_costs_one_batch_of_the_job() {
        let load = Load {
            queued_images: 0,
            until_instance_free: None,
            instances: 1,
            max_batch_size: 8,
            slowdown: 1.0,
        };
        assert_eq!(expected_completion(&times(), load, 1), ms(3));
        assert_eq!(expected_completion(&times(), load, 4), ms(6));
    }

    #[test]
    fn a_batch_running_late_is_not_an_idle_model() {
        // Past its expected end the batch still runs: the job waits for it (nothing more is
        // known of how long) and then in a batch that others fill, not alone at once.
        let late = Load {
            queued_images: 0,
            until_instance_free: Some(Duration::ZERO),
            instances: 1,
            max_batch_size: 8,
            slowdown: 1.0,
        };
        assert_eq!(expected_completion(&times(), late, 1), ms(10));
    }

    #[test]
    fn queued_work_and_running_batches_add_up() {
        let busy = Load {
            queued_images: 0,
            until_instance_free: Some(ms(4)),
            instances: 1,
            max_batch_size: 8,
            slowdown: 1.0,
        };
        // Waits for what is left of the running batch, then in a batch that others fill.
        assert_eq!(expected_completion(&times(), busy, 1), ms(4 + 10));
        // 20 images ahead + 1: two full batches of 8, then its own.
        let queued = Load {
            queued_images: 20,
            ..busy
        };
        assert_eq!(expected_completion(&times(), queued, 1), ms(4 + 20 + 10));
        // Two instances share the queue; one is free, so nothing waits for a running batch.
        let two = Load {
            queued_images: 20,
            until_instance_free: None,
            instances: 2,
            max_batch_size: 8,
            slowdown: 1.0,
        };
        // 21 images: one round of 2 × 8, then its own batch.
        assert_eq!(expected_completion(&times(), two, 1), ms(10 + 10));
        // Batches running at twice their calibrated time: the queued and own batches take
        // twice as long; the running batch's end was already estimated as it started.
        let slow = Load {
            slowdown: 2.0,
            ..queued
        };
        assert_eq!(
            expected_completion(&times(), slow, 1),
            ms(4 + 2 * (20 + 10))
        );
    }

    #[test]
    fn a_miscalibrated_size_is_corrected_by_its_own_batches() {
        // Batch 1 was calibrated at 3 ms in a slow moment; it runs in 2. Batches of 4 run as
        // calibrated.
        let mut times = times();
        for round in 0..SIZE_MIN_BATCHES - 1 {
            times.record(1, ms(2));
            times.record(4, ms(6));
            assert_eq!(times.estimate(1), ms(3), "corrected after {round} batches");
        }
        times.record(1, ms(2));
        times.record(4, ms(6));
        assert!(close(times.estimate(1), ms(2)), "{:?}", times.estimate(1));
        assert!(close(times.estimate(4), ms(6)), "{:?}", times.estimate(4));
        // Sizes that did not run borrow the nearest size's correction.
        assert_eq!(times.estimate(8), ms(10));
        let two = times.estimate(2).as_secs_f64();
        assert!((two - 0.004 * 2.0 / 3.0).abs() < 1e-6, "{two}");
        // What is recorded, and returned for the log, is still the calibrated time.
        assert_eq!(times.record(1, ms(2)), ms(3));
        // With each size's error learnt, alternating sizes no longer swing the slowdown.
        for _ in 0..4 {
            times.record(1, ms(2));
            times.record(4, ms(6));
        }
        assert!(
            (times.slowdown() - 1.0).abs() < 0.01,
            "{}",
            times.slowdown()
        );
        // Larger batches than the largest are kept with it: 9 images calibrated at 11.25 ms
        // that take twice that correct batches of 2.
        let mut small = BatchTimes::new(profile(), 2);
        for _ in 0..SIZE_MIN_BATCHES {
            small.record(9, Duration::from_micros(22_500));
        }
        assert!(close(small.estimate(2), ms(8)), "{:?}", small.estimate(2));
        // Nothing learnt from a zero time.
        let mut free = BatchTimes::new(LatencyProfile::new(vec![(1, Duration::ZERO)]).unwrap(), 2);
        assert_eq!(free.record(9, ms(1)), Duration::ZERO);
        assert_eq!(free.slowdown(), 1.0);
    }

    #[test]
    fn plans_do_not_jump_when_a_correction_takes_over_from_the_slowdown() {
        // Batch 1, calibrated at 3 ms, runs in 2: the slowdown learns it first, then the
        // correction; the expected time must not drop below the batch's time as it changes
        // hands (counted twice, it would be 2 × 0.68 ms).
        let mut times = times();
        for batch in 1..=2 * SIZE_MIN_BATCHES {
            times.record(1, ms(2));
            let expected = times.expected(1);
            assert!(
                expected >= ms(2) - Duration::from_micros(1) && expected <= ms(3),
                "after batch {batch}: {expected:?}"
            );
        }
        // A lasting change from 6 to 9 ms: when the median moves, not planned at 1.5 × 9 ms.
        for _ in 0..SIZE_MEMORY {
            times.record(4, ms(6));
        }
        for batch in 1..=SIZE_MEMORY {
            times.record(4, ms(9));
            let expected = times.expected(4);
            assert!(
                expected <= ms(9) + Duration::from_micros(1),
                "after batch {batch}: {expected:?}"
            );
        }
    }

    #[test]
    fn a_slow_spell_moves_the_slowdown_not_the_corrections() {
        let mut times = times();
        for _ in 0..SIZE_MEMORY {
            times.record(4, ms(6));
        }
        // Twenty batches at twice their time: the plan follows at once...
        for _ in 0..20 {
            times.record(4, ms(12));
        }
        assert_eq!(times.estimate(4), ms(6));
        assert!(
            (times.slowdown() - 2.0).abs() < 1e-3,
            "{}",
            times.slowdown()
        );
        // ...and back when the spell ends.
        for _ in 0..20 {
            times.record(4, ms(6));
        }
        assert!(
            (times.slowdown() - 1.0).abs() < 1e-3,
            "{}",
            times.slowdown()
        );
        // A lasting change becomes the size's usual time, and the slowdown returns to 1.
        for _ in 0..SIZE_MEMORY {
            times.record(4, ms(9));
        }
        assert!(close(times.estimate(4), ms(9)), "{:?}", times.estimate(4));
        assert!(
            (times.slowdown() - 1.0).abs() < 1e-3,
            "{}",
            times.slowdown()
        );
    }

    #[test]
    fn calibration_times_sizes_in_rounds_so_a_slow_moment_slows_all_alike() {
        // Batches take 10 ms per image, three times that during calls 5 to 8: with the sizes
        // timed back to back, that moment would be all of batch 2's runs, untimed and timed.
        let mut calls = Vec::new();
        let points = measure_batch_times(&[1, 2, 4, 8], ms(1000), |size| {
            calls.push(size);
            let slow = (5..=8).contains(&calls.len());
            Ok::<_, ()>(ms(10 * size as u64 * if slow { 3 } else { 1 }))
        })
        .unwrap();
        assert_eq!(points, [(1, ms(10)), (2, ms(20)), (4, ms(40)), (8, ms(80))]);
        // Untimed and timed ascending, then two rounds.
        assert_eq!(calls, [1, 1, 2, 2, 4, 4, 8, 8, 1, 2, 4, 8, 1, 2, 4, 8]);
        // No size past the first whose time ×2 exceeds the target.
        let mut sizes = Vec::new();
        let points = measure_batch_times(&[1, 2, 4, 8], ms(50), |size| {
            sizes.push(size);
            Ok::<_, ()>(ms(10 * size as u64))
        })
        .unwrap();
        assert_eq!(points, [(1, ms(10)), (2, ms(20)), (4, ms(40))]);
        assert!(!sizes.contains(&8), "{sizes:?}");
        // A size whose first timed run fitted but whose median does not is the last kept.
        let mut runs_of_two = 0;
        let points = measure_batch_times(&[1, 2, 4, 8], ms(50), |size| {
            runs_of_two += usize::from(size == 2);
            // Batch 2: untimed, then 20 ms, then 30 ms twice.
            let slow = size == 2 && runs_of_two > 2;
            Ok::<_, ()>(ms(10 * size as u64 + if slow { 10 } else { 0 }))
        })
        .unwrap();
        assert_eq!(points, [(1, ms(10)), (2, ms(30))]);
        // A failing run fails calibration.
        assert_eq!(measure_batch_times(&[1], ms(50), |_| Err("no")), Err("no"));
    }
}
