#!/usr/bin/env python3
"""Where a ResNet-50 server's memory goes: resident memory after warm-up (at READY) and after
load, split by mapping, for one instance, two instances, and one instance with ONNX Runtime's
CPU arena; from their differences, what each instance costs (weights and ONNX Runtime's copies
of them), what the arena adds, and everything else.

    scripts/memory_breakdown.py [--profile debug|release] [--seconds 5]

Needs the ResNet-50 repository that scripts/bench_resnet50.py exports. Writes
target/bench-resnet50/memory.json.
"""

import argparse
import json
import os
import re
import shutil
import subprocess

from served import ROOT, Server, binaries, resnet50_repository

OUT = ROOT / "target/bench-resnet50"
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")

SETUPS = {
    "one_instance": (1, "false"),
    "two_instances": (2, "false"),
    "one_instance_arena": (1, "true"),
}


def resident_by_mapping(pid, binary):
    """Resident MiB of a process by what its pages map: anonymous memory (heap, thread stacks,
    anonymous mmaps), ONNX Runtime's library, the server's binary, other files."""
    totals = dict.fromkeys(("anonymous", "onnxruntime_library", "binary", "other_files"), 0.0)
    kind = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if MAPPING.match(line):
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) > 5 else ""
                if not path or path.startswith("["):
                    kind = "anonymous"
                elif "libonnxruntime" in path:
                    kind = "onnxruntime_library"
                elif os.path.realpath(path) == os.path.realpath(binary):
                    kind = "binary"
                else:
                    kind = "other_files"
            elif line.startswith("Rss:"):
                totals[kind] += int(line.split()[1]) / 1024
    totals["total"] = sum(totals.values())
    return {key: round(value, 1) for key, value in totals.items()}


def peak_mib(pid):
    """The process's peak resident memory so far (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM")


def repository_with_instances(source, count):
    """A copy of the ResNet-50 repository (hard links, so no space) whose model runs `count`
    instances."""
    repository = OUT / f"memory-repository-{count}"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(source, repository, copy_function=os.link)
    config = repository / "resnet50/config.toml"
    text = config.read_text()
    changed = re.sub(r"(?m)^count = \d+$", f"count = {count}", text)
    if changed == text and count != 1:
        raise SystemExit(f"{config} has no `count = N` line to change")
    config.unlink()  # a hard link: write a new file, not through the link
    config.write_text(changed)
    return repository


def measure(bin_dir, repository, arena, seconds):
    binary = bin_dir / "resnet-serve"
    server = Server(binary, repository, "--cpu-arena", arena)
    try:
        server.wait_ready()
        ready = resident_by_mapping(server.process.pid, binary)
        subprocess.run([bin_dir / "resnet-bench", "--target", server.grpc, "--model", "resnet50",
                        "--protocol", "v2-grpc", "--concurrency", "1,16,32",
                        "--images", ROOT / "tests/fixtures/images", "--warmup-seconds", "1",
                        "--duration-seconds", str(seconds), "--output", OUT / "memory-load"],
                       check=True, stdout=subprocess.DEVNULL)
        loaded = resident_by_mapping(server.process.pid, binary)
        return {"ready": ready, "after_load": loaded, "peak": peak_mib(server.process.pid)}
    finally:
        server.stop()


def difference(a, b):
    return round(a - b, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="debug", choices=["debug", "release"])
    parser.add_argument("--seconds", type=float, default=5,
                        help="seconds of load at each of concurrency 1, 16 and 32")
    args = parser.parse_args()
    bin_dir = binaries(args.profile)
    source = resnet50_repository()

    runs = {}
    for name, (count, arena) in SETUPS.items():
        runs[name] = measure(bin_dir, repository_with_instances(source, count), arena,
                             args.seconds)
        print(name, json.dumps(runs[name]), flush=True)

    one, two, arena = (runs[name] for name in SETUPS)
    per_instance = difference(two["ready"]["total"], one["ready"]["total"])
    breakdown = {
        # After warm-up: what a second instance adds is one instance's cost.
        "ready": {
            "total": one["ready"]["total"],
            "per_instance": per_instance,
            "everything_else": difference(one["ready"]["total"], per_instance),
            "cpu_arena": difference(arena["ready"]["total"], one["ready"]["total"]),
        },
        # After load: batches' buffers, freed but kept by the allocator (or the arena) for
        # the next batches. It depends on the batch sizes the load made, so it varies by run.
        "after_load": {
            "total": one["after_load"]["total"],
            "kept_from_batches": difference(one["after_load"]["total"], one["ready"]["total"]),
            "cpu_arena": difference(arena["after_load"]["total"], one["after_load"]["total"]),
            "peak": one["peak"],
        },
    }
    weights = (source / "resnet50/1/model.onnx").stat().st_size / 2**20
    report = {"profile": args.profile, "weights_file_mib": round(weights, 1),
              "breakdown_mib": breakdown, "runs_mib": runs}
    (OUT / "memory.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
