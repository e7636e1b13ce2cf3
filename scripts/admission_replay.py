#!/usr/bin/env python3
"""Replays admission control offline on a machine's recorded speed: how often a p99 target is
missed, and how much is refused, under Poisson load, for several weights of the slowdown.

The input is what scripts/bench_latency_target.py records (batches.json: every batch's time
against its calibrated time, in order; summary.json: the calibration). A batch that starts at
time t in the replay takes its calibrated time x the ratio the recorded batch nearest before t
showed, so every policy meets the same slow spells. Admission is modelled on the server's
(src/batcher: expected completion, batch times corrected per size, slowdown, learnt margin and
when it is recomputed, jobs near their bound), for one instance, no queue delay, no
priorities, requests that reach admission the moment they arrive, no deadline besides the
target (so nothing expires in the queue), and a peak taken from the calibration and the
trace's mean ratio rather than measured; it is a model, not the code.

    scripts/admission_replay.py [--weights 0.1,0.5] [--target-p99-ms 190] [--batch 1,2]
        [--seeds 6] [--size-memory 127] [--miscalibrate SIZE:FACTOR,...]
        [RUN_DIR ...]   (default: target/bench-latency-target)

--size-memory 0,127 compares how many batches of each size correct its calibration (0: none,
the server before the eleventh session; 127: the server's SIZE_MEMORY; at least
SIZE_MIN_BATCHES); --miscalibrate 1:1.75 plans as if batch 1 had been calibrated 1.75 x too
slow (its batches still run at the recorded speed), as a slow moment during calibration
leaves it.
"""

import argparse
import bisect
import collections
import itertools
import json
import math
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The server's constants (src/batcher/latency.rs).
PLAN_WINDOW, PLAN_MEMORY, PLAN_MIN_JOBS, PLAN_QUANTILE = 256, 10.0, 32, 0.99
SIZE_MEMORY, SIZE_MIN_BATCHES = 127, 5
WINDOW_SECONDS = 20  # bench_latency_target.py's level length


class Trace:
    """The recorded ratio of actual to calibrated batch time, by time, runs laid end to end."""

    def __init__(self, run_dirs):
        self.times, self.ratios = [], []
        offset = 0.0
        for run in run_dirs:
            batches = json.loads((run / "batches.json").read_text())
            if not batches:
                raise SystemExit(f"{run}/batches.json holds no batches: was the server "
                                 "run with a latency target and debug logs for its batcher?")
            start = batches[0][0] - batches[0][2] / 1e3
            for logged, _, infer_ms, calibrated_ms in batches:
                self.times.append(offset + logged - infer_ms / 1e3 - start)
                self.ratios.append(infer_ms / calibrated_ms)
            offset = self.times[-1] + 1.0
        self.span = offset

    def ratio(self, at):
        index = bisect.bisect_right(self.times, at % self.span) - 1
        return self.ratios[max(index, 0)]


class Margin:
    """The server's PlanErrors: the nearest-rank p99 of actual / planned over recent jobs,
    recomputed once sixteen were recorded or forgotten since."""

    def __init__(self):
        self.ratios = collections.deque()
        self.changed = 0
        self.default = True
        self.value = 1.0

    def record(self, planned, actual, now):
        if len(self.ratios) == PLAN_WINDOW:
            self.ratios.popleft()
        self.ratios.append((now, min(max(actual / planned, 0.1), 10.0)))
        self.changed += 1

    def update(self, now):
        remembered = len(self.ratios)
        while self.ratios and now - self.ratios[0][0] > PLAN_MEMORY:
            self.ratios.popleft()
        self.changed += remembered - len(self.ratios)
        if len(self.ratios) < PLAN_MIN_JOBS:
            self.value, self.default = 1.0, True
        elif self.changed >= 16 or self.default:
            ratios = sorted(ratio for _, ratio in self.ratios)
            n = len(ratios)
            index = min(math.ceil(n * PLAN_QUANTILE) - 1, n - 2)
            self.value = min(max(ratios[index], 0.5), 4.0)
            self.default, self.changed = False, 0
        return self.value


def bounded(slowdown):
    """The server's bounds on a slowdown: 0.5 to 4."""
    return min(max(slowdown, 0.5), 4.0)


class BatchTimes:
    """The server's BatchTimes: the calibration (as planned with, `planned`), each size
    corrected by the median of its last `memory` batches' ratios (a size without one borrows
    the nearest size's, the smaller of two as near), and the slowdown, rescaled when the
    recorded size's correction changes."""

    def __init__(self, planned, weight, memory):
        self.planned, self.weight, self.memory = planned, weight, memory
        self.ratios = collections.defaultdict(collections.deque)
        self.corrections = {}
        self.slowdown = 1.0

    def correction(self, images):
        if not self.corrections:
            return 1.0
        nearest = min(self.corrections, key=lambda size: (abs(size - images), size))
        return self.corrections[nearest]

    def estimate(self, images):
        return self.planned(images) * self.correction(images)

    def record(self, images, actual):
        before = self.correction(images)
        ratio = actual / (self.planned(images) * before)
        self.slowdown = bounded(self.slowdown + (ratio - self.slowdown) * self.weight)
        if not self.memory:
            return
        ratios = self.ratios[images]
        if len(ratios) == self.memory:
            ratios.popleft()
        ratios.append(min(max(actual / self.planned(images), 0.1), 10.0))
        if len(ratios) >= SIZE_MIN_BATCHES:
            self.corrections[images] = sorted(ratios)[len(ratios) // 2]
        self.slowdown = bounded(self.slowdown * before / self.correction(images))


def replay(trace, calibrated, max_batch, weight, target, rate, seed, memory=SIZE_MEMORY,
           miscalibrated=None):
    """Poisson arrivals at `rate` for the trace's span; returns the latencies of what was
    admitted, by arrival, and the number refused."""
    rng = random.Random(seed)
    sizes = sorted(calibrated)
    miscalibrated = miscalibrated or {}

    def estimate(images):
        # Linear between the calibrated sizes, proportional beyond the largest.
        below = max((size for size in sizes if size <= images), default=sizes[0])
        above = min((size for size in sizes if size >= images), default=None)
        if above is None:
            return calibrated[below] * images / below
        if above == below:
            return calibrated[below]
        share = (images - below) / (above - below)
        return calibrated[below] + share * (calibrated[above] - calibrated[below])

    times = BatchTimes(lambda images: estimate(images) * miscalibrated.get(images, 1.0),
                       weight, memory)
    margin = Margin()
    queue = collections.deque()  # (arrival, plan or None)
    running = None  # (end, jobs, images, start)
    busy_until = 0.0
    served, refused = [], 0
    now, arrival = 0.0, rng.expovariate(rate)
    while now < trace.span:
        if running is not None and running[0] <= arrival:
            now, jobs, images, started = running
            times.record(images, now - started)
            for arrived, plan in jobs:
                served.append((arrived, now - arrived))
                if plan is not None:
                    margin.record(plan[1], now - plan[0], now)
            margin.update(now)
            running = None
        else:
            now, arrival = arrival, arrival + rng.expovariate(rate)
            factor = margin.update(now)
            idle = running is None and not queue
            until_free = 0.0 if idle or running is None else max(busy_until - now, 0.0)
            rounds = len(queue) // max_batch
            own = 1 if idle else max_batch
            slowdown = times.slowdown
            planned = (until_free + times.estimate(max_batch) * slowdown * rounds
                       + times.estimate(own) * slowdown)
            expected = planned * factor
            budget = max(target, times.estimate(1) * slowdown * factor)
            if expected > budget:
                refused += 1
                continue
            queue.append((now, (now, planned) if budget < 2 * expected else None))
        if running is None and queue:
            images = min(max_batch, len(queue))
            jobs = [queue.popleft() for _ in range(images)]
            busy_until = now + times.estimate(images) * times.slowdown
            running = (now + estimate(images) * trace.ratio(now), jobs, images, now)
    return served, refused


def p99(latencies):
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=pathlib.Path,
                        default=[ROOT / "target/bench-latency-target"])
    parser.add_argument("--weights", default="0.1,0.5",
                        help="slowdown weights to compare (the server's SLOWDOWN_WEIGHT)")
    parser.add_argument("--target-p99-ms", type=float, default=190)
    parser.add_argument("--batch", default="1,2", help="max batch sizes to replay")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--size-memory", default=str(SIZE_MEMORY),
                        help="batches per size that correct its calibration, to compare "
                             f"(0 or at least {SIZE_MIN_BATCHES})")
    parser.add_argument("--miscalibrate", default="",
                        help="SIZE:FACTOR,... planned as if calibrated FACTOR x its time")
    args = parser.parse_args()
    miscalibrated = {int(size): float(factor) for size, factor in
                     (item.split(":") for item in args.miscalibrate.split(",") if item)}
    memories = [int(memory) for memory in args.size_memory.split(",")]
    if any(0 < memory < SIZE_MIN_BATCHES for memory in memories):
        raise SystemExit(f"--size-memory: 0 or at least {SIZE_MIN_BATCHES} batches")
    trace = Trace(args.runs)
    summary = json.loads((args.runs[0] / "summary.json").read_text())
    calibrated = {int(size): ms / 1e3
                  for size, ms in summary["measured_batch_latency_ms"].items()}
    batch_sizes = [int(size) for size in args.batch.split(",")]
    if missing := [size for size in batch_sizes if size not in calibrated]:
        raise SystemExit(f"batch sizes {missing} were not calibrated in {args.runs[0]} "
                         f"(measured: {sorted(calibrated)})")
    mean_ratio = sum(trace.ratios) / len(trace.ratios)
    target = args.target_p99_ms / 1e3
    print(f"{len(trace.ratios)} batches over {trace.span:.0f} s; ratio to calibration: "
          f"mean {mean_ratio:.3f}, p99 {p99(trace.ratios):.3f}")
    results = []
    for max_batch in batch_sizes:
        peak = max_batch / (calibrated[max_batch] * mean_ratio)
        for load, weight, memory in itertools.product(
                (0.8, 2.0), map(float, args.weights.split(",")), memories):
            late = total = refused = missed = windows = 0
            for seed in range(args.seeds):
                served, refusals = replay(trace, calibrated, max_batch, weight, target,
                                          load * peak, seed, memory, miscalibrated)
                latencies = [latency for _, latency in served]
                late += sum(latency > target for latency in latencies)
                total += len(latencies)
                refused += refusals
                by_window = collections.defaultdict(list)
                for arrived, latency in served:
                    by_window[int(arrived // WINDOW_SECONDS)].append(latency)
                full = [w for w in by_window.values() if len(w) >= 100]
                windows += len(full)
                missed += sum(p99(w) > target for w in full)
            row = {"max_batch": max_batch, "load": load, "weight": weight,
                   "size_memory": memory,
                   "served_past_target": round(late / total, 4),
                   "refused": round(refused / (refused + total), 3),
                   "served_of_peak": round(total / (args.seeds * trace.span * peak), 3),
                   "windows_missing_p99": f"{missed}/{windows}"}
            results.append(row)
            print(json.dumps(row))
    return results


if __name__ == "__main__":
    main()
