#!/usr/bin/env python3
"""What any batching policy can reach at a given load, without refusing anything: simulates
Poisson arrivals served by one work-conserving batcher (when the model frees up it takes up to
max-batch waiting requests) with measured batch times, and prints p50/p99 of the time from
arrival to answer for each max batch size. The floor under docs/PERFORMANCE.md's "p99 at 80 %
of peak" target.

    scripts/queueing_floor.py [--rate 27.6] [--batch-ms 1:30.1,2:55.9,4:112.9] [--requests 400000]

Batch times default to ResNet-50's calibration on the 2-core development machine
(scripts/bench_latency_target.py --target-p99-ms 125, whose peak was 34.5/s); sizes between measured ones are interpolated linearly, beyond the largest
scaled per image.
"""

import argparse

import numpy as np


def batch_time(points, size):
    sizes = sorted(points)
    if size <= sizes[0]:
        return points[sizes[0]]
    if size >= sizes[-1]:
        return points[sizes[-1]] * size / sizes[-1]
    upper = next(s for s in sizes if s >= size)
    lower = max(s for s in sizes if s < size)
    fraction = (size - lower) / (upper - lower)
    return points[lower] + (points[upper] - points[lower]) * fraction


def simulate(rate, points, max_batch, requests, seed=1):
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, requests))
    latencies = np.empty(requests)
    free, first = 0.0, 0
    while first < requests:
        start = max(free, arrivals[first])
        last = first
        while last < requests and arrivals[last] <= start and last - first < max_batch:
            last += 1
        end = start + batch_time(points, last - first)
        latencies[first:last] = end - arrivals[first:last]
        free, first = end, last
    return np.percentile(latencies, 50), np.percentile(latencies, 99)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=27.6, help="arrivals per second")
    parser.add_argument("--batch-ms", default="1:30.1,2:55.9,4:112.9")
    parser.add_argument("--requests", type=int, default=400_000)
    args = parser.parse_args()
    points = {int(size): float(ms) / 1000 for size, ms in
              (pair.split(":") for pair in args.batch_ms.split(","))}
    print("| max batch | peak | 2 × t(b) | p50 | p99 |")
    print("|---|---|---|---|---|")
    for max_batch in sorted(points):
        p50, p99 = simulate(args.rate, points, max_batch, args.requests)
        peak = max_batch / batch_time(points, max_batch)
        print(f"| {max_batch} | {peak:.1f}/s | {2000 * batch_time(points, max_batch):.0f} ms "
              f"| {1000 * p50:.0f} ms | {1000 * p99:.0f} ms |")


if __name__ == "__main__":
    main()
