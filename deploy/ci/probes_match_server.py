#!/usr/bin/env python3
"""Start the real server exactly as the rendered cpu overlay configures it, and check that
the manifests' probes, ports and grace period, and the metrics the Grafana dashboard and the
PrometheusRule query, match what that server does (run by scripts/check_deploy.sh).

From the rendered Deployment (`kubectl kustomize deploy/k8s/overlays/cpu`) it takes the
container's command/args, its `env` and the `envFrom` ConfigMap, as rendered. Only image
paths are replaced: `--model-repository` / RESNET_SERVE_MODEL_REPOSITORY point at a copy of
models/, `--ort-lib` / RESNET_SERVE_ORT_LIB (an ENV of the image) at the local ONNX Runtime,
HOME/TMPDIR at a scratch directory. The manifest's ports are used when free; when one is
busy every port the server binds is moved to a free one and the probes and Service ports
are followed through that mapping. Then:
- the startupProbe must succeed within periodSeconds x failureThreshold, then the liveness
  and readiness probes (httpGet path + port, or grpc.health.v1 on a grpc port) must pass;
- every Service port must answer through its targetPort (http: GET /health/live, grpc:
  grpc.health.v1 Check, metrics: GET /metrics);
- drain seconds + shutdown timeout + 5 <= terminationGracePeriodSeconds (same render), and
  after SIGTERM the server exits 0 within that grace period;
- after one /classify (and one undecodable image, so that resnet_serve_rejected_total has a
  series), the /metrics scrape must contain every metric name the dashboard's
  PromQL and the PrometheusRule (cpu overlay + components/monitoring) use.

    probes_match_server.py --kubectl PATH --server-bin PATH --ort-lib PATH
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAY = "deploy/k8s/overlays/cpu"
MONITORING = "tests/fixtures/deploy/kustomize/cpu-monitoring"
DASHBOARD = "deploy/grafana/resnet-serve.json"
IMAGE = os.path.join(ROOT, "tests", "fixtures", "images", "fashion-0-label9.png")
PORT_VARIABLES = ("RESNET_SERVE_HTTP_PORT", "RESNET_SERVE_GRPC_PORT",
                  "RESNET_SERVE_METRICS_PORT")
PATH_FLAGS = {"--model-repository": "RESNET_SERVE_MODEL_REPOSITORY",
              "--ort-lib": "RESNET_SERVE_ORT_LIB"}
# Server defaults (src/config.rs) when the render does not set them.
DEFAULT_DRAIN_SECONDS = 5
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 30

problems = []

# Exported only by a server started with --target-p99-ms, which the overlays do not set.
ONLY_WITH_A_LATENCY_TARGET = {"resnet_serve_admission_margin"}


def problem(message):
    problems.append(message)


def render(kubectl, directory):
    result = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, directory)],
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        sys.exit(f"probes_match_server: kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(resources, kind):
    found = [r for r in resources if r["kind"] == kind]
    if len(found) != 1:
        sys.exit(f"probes_match_server: expected one {kind}, found {len(found)}")
    return found[0]


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port, path, timeout):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        return None, str(error).encode()


def grpc_health(port, timeout, service=""):
    """grpc.health.v1.Health/Check as the kubelet sends it; True when SERVING."""
    import grpc  # pinned in requirements.txt (tritonclient)
    request = (b"\x0a" + bytes([len(service)]) + service.encode()) if service else b""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda raw: raw,
                                    response_deserializer=lambda raw: raw)
        try:
            reply = check(request, timeout=timeout)
        except grpc.RpcError as error:
            return False, f"{error.code()}: {error.details()}"
    # HealthCheckResponse { ServingStatus status = 1; }, SERVING = 1.
    return reply == b"\x08\x01", reply


def container_ports(container):
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])
            if "name" in port}


def run_probe(kind, probe, resolve, timeout=None):
    """One probe attempt the way the kubelet makes it; (ok, detail)."""
    timeout = timeout or probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = resolve(get["port"])
        if port is None:
            return False, f"{kind}: port {get['port']!r} is not a container port"
        status, body = http_get(port, get.get("path", "/"), timeout)
        # The kubelet counts 200-399 as success.
        return status is not None and 200 <= status < 400, \
            f"{kind}: GET {get.get('path')} on {get['port']} ({port}) -> {status} {body[:200]!r}"
    if "grpc" in probe:
        port = resolve(probe["grpc"]["port"])
        if port is None:
            return False, f"{kind}: port {probe['grpc']['port']!r} is not a container port"
        ok, detail = grpc_health(port, timeout, probe["grpc"].get("service", ""))
        return ok, f"{kind}: grpc.health.v1 on {probe['grpc']['port']} ({port}) -> {detail!r}"
    if "tcpSocket" in probe:
        port = resolve(probe["tcpSocket"]["port"])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
            return True, f"{kind}: tcp {port} open"
        except OSError as error:
            return False, f"{kind}: tcp {port}: {error}"
    return False, f"{kind}: unsupported probe handler {sorted(probe)}"


def metric_names(expression):
    """The resnet_serve_* series an expression reads, histogram suffixes removed."""
    return {re.sub(r"_(bucket|sum|count)$", "", name)
            for name in re.findall(r"\bresnet_serve_[a-z0-9_]+", expression)}


def scraped_names(text):
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            continue  # a family without samples exports nothing to Prometheus
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            names.add(name)
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def dashboard_metrics():
    with open(os.path.join(ROOT, DASHBOARD), encoding="utf-8") as source:
        dashboard = json.load(source)
    used = set()
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))  # collapsed rows
        for target in panel.get("targets", []):
            used |= metric_names(target.get("expr", ""))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        used |= metric_names(variable.get("definition", "") + " " + query)
    return used


def rule_metrics(kubectl):
    rule = one(render(kubectl, MONITORING), "PrometheusRule")
    used = set()
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            used |= metric_names(entry["expr"])
    return used


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--ort-lib", required=True)
    args = parser.parse_args()

    resources = render(args.kubectl, OVERLAY)
    deployment = one(resources, "Deployment")
    service = one(resources, "Service")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    config_maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}

    env = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name is not None:
            env.update({k: str(v) for k, v in config_maps[name].get("data", {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])

    # Grace period arithmetic, from this render.
    drain = int(env.get("RESNET_SERVE_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))
    shutdown = int(env.get("RESNET_SERVE_SHUTDOWN_TIMEOUT_SECONDS",
                           DEFAULT_SHUTDOWN_TIMEOUT_SECONDS))
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if drain + shutdown + 5 > grace:
        problem(f"drain {drain} + shutdown timeout {shutdown} + 5 > "
                f"terminationGracePeriodSeconds {grace}")

    scratch = tempfile.mkdtemp(prefix="resnet-serve-probes-")
    try:
        run(args, env, container, service, grace, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if problems:
        print(f"probes_match_server: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        sys.exit(1)
    print("probes_match_server: probes, Service ports, grace period and dashboard/alert "
          "metrics match the running server")


def run(args, env, container, service, grace, scratch):
    models = os.path.join(scratch, "models")
    shutil.copytree(os.path.join(ROOT, "models"), models)
    writable = os.path.join(scratch, "tmp")
    os.mkdir(writable)

    # Image paths -> local ones; everything else as rendered.
    env = dict(env)
    env["RESNET_SERVE_MODEL_REPOSITORY"] = models
    env["RESNET_SERVE_ORT_LIB"] = args.ort_lib
    env["HOME"] = env["TMPDIR"] = writable
    argv = list(container.get("command", [])[1:]) + list(container.get("args", []))
    local = {"--model-repository": models, "--ort-lib": args.ort_lib}
    for index, arg in enumerate(argv):
        flag, equals, _ = arg.partition("=")
        if flag in local and equals:
            argv[index] = f"{flag}={local[flag]}"
        elif index > 0 and argv[index - 1] in local:
            argv[index] = local[argv[index - 1]]

    # containerPort -> the port the server really binds (the same unless busy).
    declared = {int(env[var]) for var in PORT_VARIABLES if var in env}
    remap = {}
    if not all(port_free(port) for port in declared):
        remap = {port: free_port() for port in declared}
        for var in PORT_VARIABLES:
            if var in env:
                env[var] = str(remap[int(env[var])])
        print(f"probes_match_server: manifest ports busy, remapped {remap}")
    named = container_ports(container)
    declared_container = {port["containerPort"] for port in container.get("ports", [])}
    for port in declared_container - declared:
        problem(f"containerPort {port} is not a port the server is configured to bind "
                f"({sorted(declared)})")

    def resolve(port):
        number = named.get(port) if isinstance(port, str) else port
        if number is None:
            return None
        return remap.get(number, number)

    env["PATH"] = "/usr/bin:/bin"
    env.setdefault("RUST_LOG", "info,ort=warn")
    log_path = os.path.join(scratch, "server.log")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([args.server_bin] + argv, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        check_server(args, process, container, service, resolve, grace)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if problems:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                print("--- server log (last 3000 characters) ---\n" + log.read()[-3000:],
                      file=sys.stderr)


def check_server(args, process, container, service, resolve, grace):
    # startupProbe: polled every periodSeconds until success, at most failureThreshold times
    # (polled faster here; the deadline is what the kubelet allows).
    startup = container.get("startupProbe")
    if startup is None:
        problem("no startupProbe")
        return
    allowed = startup.get("initialDelaySeconds", 0) + \
        startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            problem(f"the server exited with {process.returncode} before its startupProbe "
                    "passed (it rejects the rendered configuration?)")
            return
        ok, detail = run_probe("startupProbe", startup, resolve, timeout=2)
        if ok:
            break
        if time.monotonic() - started > allowed:
            problem(f"startupProbe still failing after {allowed} s: {detail}")
            return
        time.sleep(0.2)
    print(f"probes_match_server: startupProbe passed after {time.monotonic() - started:.1f} s "
          f"(allowed {allowed} s): {detail}")
    for kind in ("livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            problem(f"no {kind}")
            continue
        ok, detail = run_probe(kind, probe, resolve)
        (print(f"probes_match_server: {detail}") if ok else problem(detail))

    # Every Service port, through its targetPort, with a request of its protocol.
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        number = resolve(target)
        where = f"Service port {port.get('name')} {port['port']} -> {target}"
        if number is None:
            problem(f"{where}: targetPort is not a container port")
            continue
        protocol = port.get("appProtocol", "")
        if protocol == "grpc" or port.get("name") == "grpc":
            ok, detail = grpc_health(number, 5)
        elif port.get("name") == "metrics":
            status, body = http_get(number, "/metrics", 5)
            ok, detail = status == 200 and b"resnet_serve_" in body, status
        else:
            status, body = http_get(number, "/health/live", 5)
            ok, detail = status == 200, status
        message = f"{where} ({number}): {detail!r}"
        (print(f"probes_match_server: {message}") if ok else problem(message))

    # One classification, so per-model series exist, then the scrape.
    http = resolve("http")
    with open(IMAGE, "rb") as image:
        request = urllib.request.Request(f"http://127.0.0.1:{http}/classify?top_k=1",
                                         data=image.read(),
                                         headers={"content-type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            if reply.status != 200:
                problem(f"/classify answered {reply.status}")
    except (OSError, urllib.error.URLError) as error:
        problem(f"/classify failed: {error}")
    # resnet_serve_rejected_total is a labelled counter: the server exports a series only
    # once something was rejected. One undecodable image is rejected as `invalid` (a 4xx).
    request = urllib.request.Request(f"http://127.0.0.1:{http}/classify?top_k=1",
                                     data=b"not an image",
                                     headers={"content-type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            problem(f"/classify of an undecodable image answered {reply.status}, expected 4xx")
    except urllib.error.HTTPError as error:
        if not 400 <= error.code < 500:
            problem(f"/classify of an undecodable image answered {error.code}, expected 4xx")
    except (OSError, urllib.error.URLError) as error:
        problem(f"/classify failed: {error}")
    status, body = http_get(resolve("metrics"), "/metrics", 10)
    if status != 200:
        problem(f"/metrics answered {status}")
    scraped = scraped_names(body.decode("utf-8", "replace"))
    for label, used in (("the dashboard", dashboard_metrics()),
                        ("the PrometheusRule", rule_metrics(args.kubectl))):
        if len(used) < 3:
            problem(f"{label}: found only {sorted(used)} in its queries")
        for missing in sorted(used - scraped - ONLY_WITH_A_LATENCY_TARGET):
            problem(f"{label} queries {missing}, which the running server does not export")
        print(f"probes_match_server: {label}: {len(used)} metrics, all in the scrape")

    # SIGTERM: the server must exit 0 within the grace period the pod gives it.
    process.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    try:
        code = process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        problem(f"still running {grace} s (terminationGracePeriodSeconds) after SIGTERM")
        return
    if code != 0:
        problem(f"exited with {code} after SIGTERM")
    print(f"probes_match_server: SIGTERM: exited {code} after "
          f"{time.monotonic() - terminated:.1f} s (grace {grace} s)")


if __name__ == "__main__":
    main()
