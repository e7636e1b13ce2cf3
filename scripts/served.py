"""A resnet-serve process started by a script: its addresses and log events (from the JSON
log), readiness, and resident memory. Shared by the benchmark and soak scripts."""

import datetime
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Log messages whose time is worth keeping (their `seconds` field, or the time seen).
EVENTS = ("ONNX Runtime sessions built", "batching calibrated", "model ready", "golden check passed")


class Server:
    """`binary --model-repository repository` on ephemeral ports, plus `extra` flags; `log`
    is its RUST_LOG."""

    def __init__(self, binary, repository, *extra, log=None):
        self.started = time.monotonic()
        env = dict(os.environ, RUST_LOG=log) if log else None
        self.process = subprocess.Popen(
            [str(binary), "--model-repository", str(repository), "--host", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
             "--log-format", "json", *map(str, extra)],
            stdout=subprocess.PIPE, text=True, env=env)
        self.events = {}
        # The batcher's "batch timed" events (logged at debug level): (seconds since the
        # epoch when logged, its fields).
        self.batches = []
        self.http = self.grpc = self.metrics = None
        self._listening = threading.Event()
        # Reading the whole log also keeps the server from blocking on a full pipe.
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._listening.wait(600):
            self.stop()
            raise RuntimeError("the server did not start listening")

    def _read_log(self):
        for line in self.process.stdout:
            event = json.loads(line)
            fields = event.get("fields", {})
            message = fields.get("message", "")
            if message == "batch timed":
                self.batches.append((timestamp(event["timestamp"]), fields))
            if message in EVENTS:
                self.events[message] = fields.get("seconds", time.monotonic() - self.started)
            if "http_address" in fields:
                self.http = fields["http_address"]
                self.grpc = fields["grpc_address"]
                self.metrics = fields["metrics_address"]
                self._listening.set()
        self._listening.set()

    def wait_ready(self, timeout=600):
        """Seconds from start until `/v2/health/ready` answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready") as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("the server did not become ready")

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def chosen_batching(server, model):
    """The batch size a server calibrated with --target-p99-ms chose for `model`, its measured
    time in ms (of the largest measured size up to it), and every measured size's time, from
    the V2 model config."""
    with urllib.request.urlopen(f"http://{server.http}/v2/models/{model}/config") as response:
        config = json.load(response)
    batch = config["max_batch_size"]
    measured = dict(
        (int(size), float(ms)) for size, ms in
        (point.split(":") for point in
         config["parameters"]["batch_latency_ms"]["string_value"].split()))
    batch_ms = measured.get(batch) or max(ms for size, ms in measured.items() if size <= batch)
    return batch, batch_ms, measured


def timestamp(text):
    """Seconds since the epoch of a log line's RFC 3339 timestamp (to the microsecond)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return seconds.timestamp() + float("0." + (fraction or "0"))


def binaries(profile="release"):
    """Builds `resnet-serve` and `resnet-bench` in `profile` (debug or release); returns their
    directory."""
    if profile not in ("debug", "release"):
        raise ValueError(f"profile {profile!r}: debug or release")
    flags = ["--release"] if profile == "release" else []
    subprocess.run(["cargo", "build", "--quiet", *flags, "--bin", "resnet-serve",
                    "--bin", "resnet-bench"], check=True, cwd=ROOT)
    return ROOT / "target" / profile


def resnet50_repository():
    """The repository scripts/bench_resnet50.py exported ResNet-50 into."""
    repository = ROOT / "target/bench-resnet50/repository"
    if not (repository / "resnet50").exists():
        raise SystemExit("run scripts/bench_resnet50.py first: it exports ResNet-50")
    return repository
