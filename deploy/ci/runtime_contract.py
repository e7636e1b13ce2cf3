#!/usr/bin/env python3
"""Run resnet-serve the way the container images do and check the contract they rely on.

The images cannot be built here (no Docker engine, base images cannot be pulled), so this
reproduces what they set up around the binary, with util-linux:
- PID 1 of a new PID namespace (`unshare --pid --fork`): the exec-form ENTRYPOINT with no
  init, so SIGTERM must be handled by the server itself;
- a new mount namespace whose root file system is remounted read-only, with a tmpfs as the
  only writable directory (readOnlyRootFilesystem + the /tmp emptyDir), HOME and TMPDIR
  pointing at it, and the model repository a read-only copy;
- uid/gid 65532 with no supplementary groups, no capabilities and no_new_privs (the pod's
  runAsUser, capabilities drop ALL, allowPrivilegeEscalation: false), and an environment
  holding only what the image and ConfigMap set.
It then checks /health/ready, a real /classify, /metrics, and that SIGTERM turns readiness to
503 while requests are still served for --drain-seconds, then exits 0.

The binary is the debug build, to keep CI fast; the release build in the images runs the
same code. Needs root (CI runs as root) for the namespaces and the uid switch.

    runtime_contract.py --server-bin PATH --ort-lib PATH
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UID = 65532
START_TIMEOUT_S = 120
DRAIN_SECONDS = 3
SHUTDOWN_TIMEOUT_SECONDS = 10
IMAGE = os.path.join(ROOT, "tests", "fixtures", "images", "fashion-0-label9.png")


def fail(message, log=None):
    print(f"runtime_contract: FAIL: {message}", file=sys.stderr)
    if log is not None:
        print("--- server log (last 4000 characters) ---", file=sys.stderr)
        print(log.text()[-4000:], file=sys.stderr)
    sys.exit(1)


class Log:
    """Collects the server's output (JSON log lines) on a thread."""

    def __init__(self, stream):
        self.lines = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def text(self):
        with self.lock:
            return "\n".join(self.lines)

    def events(self):
        with self.lock:
            lines = list(self.lines)
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def stage_models(scratch):
    """The shipped repository when it has a model (as baked into the image), else the
    test fixture with the labels in tests/fixtures/deploy."""
    models = os.path.join(scratch, "models")
    shipped = os.path.join(ROOT, "models")
    if os.path.isdir(shipped) and any(
            os.path.isdir(os.path.join(shipped, entry)) for entry in os.listdir(shipped)):
        shutil.copytree(shipped, models)
        source = "models/"
    else:
        model = os.path.join(models, "slow")
        shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "models", "slow"), model)
        shutil.copy(os.path.join(ROOT, "tests", "fixtures", "deploy", "slow-labels.txt"),
                    os.path.join(model, "labels.txt"))
        source = "tests/fixtures/models/slow"
    for directory, subdirectories, files in os.walk(models):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        for name in subdirectories:
            os.chmod(os.path.join(directory, name), 0o555)
    os.chmod(models, 0o555)
    return models, source


def child_pid(parent):
    """The process unshare forked: PID 1 inside the new namespace."""
    path = f"/proc/{parent}/task/{parent}/children"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(path, encoding="ascii") as children:
            pids = children.read().split()
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    return None


def status_fields(pid):
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def request(url, data=None, headers=None, timeout=30):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data,
                                                           headers=headers or {}),
                                    timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--ort-lib", required=True)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("runtime_contract: SKIPPED: needs root for namespaces and the uid switch "
              "(CI runs as root)", file=sys.stderr)
        return
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            fail(f"{tool} (util-linux) not found")

    scratch = tempfile.mkdtemp(prefix="resnet-serve-contract-")
    os.chmod(scratch, 0o755)
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        # stage_models made the copy read-only; rmtree as root removes it anyway.


def run(args, scratch):
    models, source = stage_models(scratch)
    # The library and binary, read-only and outside any writable path, as in the image.
    binary = os.path.join(scratch, "resnet-serve")
    shutil.copy(args.server_bin, binary)
    library_dir = os.path.join(scratch, "onnxruntime")
    os.mkdir(library_dir)
    shutil.copy(args.ort_lib, library_dir)
    library = os.path.join(library_dir, os.path.basename(args.ort_lib))
    writable = os.path.join(scratch, "tmp")
    os.mkdir(writable)

    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": writable,
        "TMPDIR": writable,
        "RESNET_SERVE_MODEL_REPOSITORY": models,
        "RESNET_SERVE_ORT_LIB": library,
        "RESNET_SERVE_HOST": "127.0.0.1",
        "RESNET_SERVE_HTTP_PORT": "0",
        "RESNET_SERVE_GRPC_PORT": "0",
        "RESNET_SERVE_METRICS_PORT": "0",
        "RESNET_SERVE_LOG_FORMAT": "json",
        "RESNET_SERVE_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "RESNET_SERVE_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_SECONDS),
        "RUST_LOG": "info,ort=warn",
    }
    # Inside the namespaces: make the whole tree read-only (a bind remount changes only
    # this namespace's view), give the server one tmpfs, then become PID 1 as 65532.
    setup = (
        "set -e; mount --make-rprivate /; mount -o remount,bind,ro /; "
        f"mount -t tmpfs -o size=64m,mode=0700,uid={UID},gid={UID} tmpfs {writable}; "
        f"exec setpriv --reuid={UID} --regid={UID} --clear-groups --no-new-privs "
        f"--inh-caps=-all --bounding-set=-all -- {binary}"
    )
    command = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--",
               "/bin/sh", "-c", setup]
    started = time.monotonic()
    process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = Log(process.stdout)
    try:
        check_running_server(process, log, source, started)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def check_running_server(process, log, source, started):
    server = child_pid(process.pid)
    if server is None:
        fail("unshare started no child", log)

    addresses = None
    while addresses is None:
        if process.poll() is not None:
            fail(f"the server exited with {process.returncode} before listening", log)
        if time.monotonic() - started > START_TIMEOUT_S:
            fail(f"not listening after {START_TIMEOUT_S} s", log)
        for event in log.events():
            fields = event.get("fields", {})
            if "http_address" in fields:
                addresses = fields
        time.sleep(0.1)
    http = f"http://{addresses['http_address']}"
    metrics = f"http://{addresses['metrics_address']}"

    fields = status_fields(server)
    ns_pids = fields.get("NSpid", [])
    if ns_pids[-1:] != ["1"]:
        fail(f"the server is not PID 1 in its namespace (NSpid {ns_pids})", log)
    if fields["Uid"][:2] != [str(UID)] * 2 or fields["Gid"][:2] != [str(UID)] * 2:
        fail(f"the server runs as uid {fields['Uid']} gid {fields['Gid']}, not {UID}", log)
    if fields.get("Groups"):
        fail(f"supplementary groups {fields['Groups']}", log)
    if fields.get("CapEff") != ["0000000000000000"] or fields.get("NoNewPrivs") != ["1"]:
        fail(f"capabilities {fields.get('CapEff')} no_new_privs {fields.get('NoNewPrivs')}",
             log)

    status, body = request(f"{http}/health/ready")
    if status != 200:
        fail(f"/health/ready answered {status} {body!r} once listening", log)
    with open(IMAGE, "rb") as image:
        png = image.read()
    status, body = request(f"{http}/classify?top_k=1", png, {"content-type": "image/png"})
    if status != 200 or len(json.loads(body).get("predictions", [])) != 1:
        fail(f"/classify answered {status} {body[:300]!r}", log)
    status, body = request(f"{metrics}/metrics")
    if status != 200 or b"resnet_serve_model_ready{" not in body:
        fail(f"/metrics answered {status} without resnet_serve_model_ready", log)
    print(f"runtime_contract: serving {source} as PID 1, uid {UID}, read-only root, "
          f"only TMPDIR writable: ready, /classify 200, /metrics 200")

    # SIGTERM from outside the namespace, as the container runtime sends it to PID 1.
    os.kill(server, signal.SIGTERM)
    terminated = time.monotonic()
    while not any(event.get("fields", {}).get("message", "").startswith("shutting down")
                  for event in log.events()):
        if time.monotonic() - terminated > 5:
            fail("no `shutting down` in the log 5 s after SIGTERM: PID 1 ignored it?", log)
        time.sleep(0.02)
    status, _ = request(f"{http}/health/ready")
    if status != 503:
        fail(f"/health/ready answered {status} after SIGTERM, expected 503 (draining)", log)
    status, body = request(f"{http}/classify?top_k=1", png, {"content-type": "image/png"})
    if status != 200:
        fail(f"/classify during the drain answered {status} {body[:300]!r}", log)
    limit = DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 5
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        fail(f"still running {limit} s after SIGTERM", log)
    elapsed = time.monotonic() - terminated
    log.thread.join(timeout=5)
    if code != 0:
        fail(f"exited with {code} after SIGTERM, expected 0", log)
    if elapsed < DRAIN_SECONDS - 0.5:
        fail(f"exited {elapsed:.1f} s after SIGTERM, before the {DRAIN_SECONDS} s drain", log)
    messages = [event.get("fields", {}).get("message", "") for event in log.events()]
    if "stopped" not in messages:
        fail("the log does not say `stopped`", log)
    print(f"runtime_contract: SIGTERM to PID 1: not ready at once, served during the drain, "
          f"exited 0 after {elapsed:.1f} s (drain {DRAIN_SECONDS} s)")


if __name__ == "__main__":
    main()
