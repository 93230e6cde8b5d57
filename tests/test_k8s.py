"""The Kubernetes manifests (deploy/k8s/): no cluster runs here. Every object is validated against the
Kubernetes API schemas that kubernetes-validate bundles, for Kubernetes K8S_VERSION and strictly (an
unknown field is an error). The KServe InferenceService, a custom resource with no bundled schema, is
validated against a schema of the fields it uses written from KServe's API reference
(tests/fixtures/k8s/inferenceservice.schema.json), and the PodSpec its predictor inlines against
Kubernetes' PodSpec. Every container's command line is parsed by kws's own parsers (test_deploy's
helpers) with the files its Secrets and ConfigMaps mount laid out as the kubelet would, and the probes are
asked of a server started from the manifest's own command line, on loopback."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

from test_deploy import DEPLOY, REPO, check_command, secrets  # noqa: F401  (secrets: the fixture)

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.34"  # a recent release that kubernetes-validate bundles; the schemas of exactly this one
PROBES = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}  # the Open Inference Protocol's
ISVC_SCHEMA = REPO / "tests" / "fixtures" / "k8s" / "inferenceservice.schema.json"
# What each Secret holds when created as deploy/k8s/README.md says, as files of test_deploy's /etc/kws.
SECRET_FILES = {
    ("kws-server-tls", "tls.crt"): "certs/server.pem",
    ("kws-server-tls", "tls.key"): "certs/server.key",
    ("kws-ca", "ca.pem"): "certs/ca.pem",
    ("kws-tokens", "tokens.txt"): "tokens.txt",
    ("kws-mqtt-passwd", "kws.passwd"): "kws.passwd",
    **{("kws-mqtt-workers", w): f"mqtt/{w}.pass" for w in ("w0", "w1", "w2")},
}
Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = [(p, d) for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml" for d in load(p)]


def find(kind: str, name: str | None = None) -> list[Doc]:
    found = [d for _, d in MANIFESTS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert found, f"no {kind} {name or ''} in deploy/k8s"
    return found


def one(kind: str, name: str) -> Doc:
    (doc,) = find(kind, name)
    return doc


def k8s_valid(doc: Doc) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def quantity(cpu: str | int) -> float:
    return int(str(cpu)[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)


def image_uid() -> str:
    (user,) = [ln.split()[1] for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith("USER ")]
    return user


# --- the pod as the kubelet starts it ----------------------------------------------------------------

def volume_files(volume: Doc, etc: Path) -> dict[str, str] | None:
    """{path in the volume: its content}; None for a writable volume (PVC, emptyDir)."""
    def secret(name: str, items: list[Doc] | None) -> dict[str, str]:
        keys = {k for s, k in SECRET_FILES if s == name}
        assert keys, f"Secret {name} is not one deploy/k8s/README.md creates"
        chosen = items or [{"key": k, "path": k} for k in keys]
        assert {i["key"] for i in chosen} <= keys, f"Secret {name} has no key {chosen}"
        return {i["path"]: (etc / SECRET_FILES[name, i["key"]]).read_text() for i in chosen}

    def config_map(name: str, items: list[Doc] | None) -> dict[str, str]:
        data = one("ConfigMap", name)["data"]
        return {i["path"]: data[i["key"]] for i in items} if items else dict(data)

    if "secret" in volume:
        return secret(volume["secret"]["secretName"], volume["secret"].get("items"))
    if "configMap" in volume:
        return config_map(volume["configMap"]["name"], volume["configMap"].get("items"))
    if "projected" in volume:
        files: dict[str, str] = {}
        for source in volume["projected"]["sources"]:
            if "secret" in source:
                files |= secret(source["secret"]["name"], source["secret"].get("items"))
            else:
                files |= config_map(source["configMap"]["name"], source["configMap"].get("items"))
        return files
    assert "persistentVolumeClaim" in volume or "emptyDir" in volume, volume
    return None


def mount(pod: Doc, container: Doc, root: Path, etc: Path) -> dict[str, bool]:
    """Lays the container's volumes out under root at their mount paths; returns {mount path: writable}."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    writable = {}
    for m in container.get("volumeMounts", []):
        files = volume_files(volumes[m["name"]], etc)
        where = root / m["mountPath"].lstrip("/")
        if "subPath" in m:
            assert files is not None and m["subPath"] in files, m
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text(files[m["subPath"]])
        else:
            where.mkdir(parents=True, exist_ok=True)
            for name, text in (files or {}).items():
                (where / name).write_text(text)
        writable[m["mountPath"]] = files is None and not m.get("readOnly", False)
    return writable


def command_line(pod_name: str, container: Doc, root: Path,
                 mounts: dict[str, bool]) -> tuple[list[str], dict[str, str]]:
    """The container's argv and environment, $(VAR) expanded as Kubernetes does, mounted paths under root."""
    def local(value: str) -> str:
        inside = any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts)
        return str(root) + value if inside else value

    env = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, e
            env[e["name"]] = pod_name
        else:
            env[e["name"]] = local(e["value"])
    argv = [local(re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a))
            for a in container["command"] + container.get("args", [])]
    assert container.get("workingDir", "/opt/kws") == "/opt/kws"  # the image's WORKDIR: the repo, for models/
    return argv, env


def pod_of(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]["predictor"]


def parsed(doc: Doc, etc: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Doc, list[str], dict[str, str]]:
    """The kws container of a Deployment or InferenceService, its command line parsed by kws's parser with
    its volumes mounted under root; returns the container, its argv and its environment."""
    pod = pod_of(doc)
    (container,) = [c for c in pod["containers"] if c["image"].startswith("kws:")]
    mounts = mount(pod, container, root, etc)
    argv, env = command_line(f"{doc['metadata']['name']}-5d8f9c7b6-x2x7q", container, root, mounts)
    assert check_command(argv, env, monkeypatch, plaintext=doc["kind"] == "InferenceService") == container["command"][0]
    return container, argv, env


def ports(container: Doc) -> dict[str | int, int]:
    """Port name or number -> number."""
    out: dict[str | int, int] = {}
    for p in container.get("ports", []):
        out[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            out[p["name"]] = p["containerPort"]
    return out


@pytest.fixture(scope="module")
def etc(secrets: Path) -> Path:  # noqa: F811
    (secrets / "kws.passwd").write_text("coop:$7$101$c2FsdA==$aGFzaA==\n")  # mosquitto_passwd's format
    return secrets


# --- schemas ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, doc", [(p, d) for p, d in MANIFESTS if d["kind"] != "InferenceService"],
                         ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in MANIFESTS
                              if d["kind"] != "InferenceService"])
def test_manifest_validates_against_the_kubernetes_schema(path: Path, doc: Doc) -> None:
    k8s_valid(doc)


def test_inferenceservice_validates_against_kserves_fields_and_the_podspec() -> None:
    (isvc,) = find("InferenceService")
    schema = json.loads(ISVC_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(isvc, schema)
    predictor = isvc["spec"]["predictor"]
    extension = set(schema["$defs"]["predictor"]["properties"]) - {"containers"}
    # The rest of the predictor is a PodSpec: a field of neither (protocolVersion here, say) fails.
    k8s_valid({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{isvc['metadata']['name']}-predictor"},
               "spec": {k: v for k, v in predictor.items() if k not in extension}})


def test_kustomization_lists_every_manifest_but_the_custom_resources() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "resources", "images", "namespace"}  # `kustomize edit` may add these
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    # kserve/ needs KServe's CRDs: applying it with the rest would fail the whole apply without them.
    assert sorted(k["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert not list(K8S.glob("*/kustomization.yaml"))
    assert all(d["kind"] != "InferenceService" for r in k["resources"] for d in load(K8S / r))


def test_kws_containers_run_the_repos_image_unprivileged() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    kws = [(d, c) for _, d in MANIFESTS if d["kind"] in ("Deployment", "InferenceService")
           for c in pod_of(d)["containers"] if c["image"].split(":")[0] == "kws"]
    assert len(kws) == 5  # the server, three members' workers, the InferenceService
    for doc, c in kws:
        pod = pod_of(doc)
        security = pod.get("securityContext", {}) | c.get("securityContext", {})
        assert c["image"] == f"kws:{version}"
        assert security["runAsNonRoot"] and str(security["runAsUser"]) == image_uid()
        assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"  # one BLAS thread per process
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["cpu"]


# --- the server -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, name", [("Deployment", "kws-server"), ("InferenceService", "kws")])
def test_server_processes_fit_the_cpu_limit_and_outlive_their_grace(kind: str, name: str, etc: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kws_rpc.serving.server import parse_args

    doc = one(kind, name)
    container, argv, _ = parsed(doc, etc, tmp_path, monkeypatch)
    config = parse_args(argv[1:])
    limits, requests_ = container["resources"]["limits"], container["resources"]["requests"]
    assert config.processes == quantity(limits["cpu"]) == quantity(requests_["cpu"])  # one process per core
    if kind == "Deployment":
        # stop(): the gateway gets grace + 1 s, then gRPC its grace; the kubelet's SIGKILL must come later
        assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 2 * config.grace_s + 1
        assert "replicas" not in doc["spec"], "the HorizontalPodAutoscaler owns the replica count"
        assert config.tls is not None and config.auth.tokens is not None
    else:  # Knative sets the grace period to the revision's timeout, 300 s by default
        assert "terminationGracePeriodSeconds" not in doc["spec"]["predictor"]
    exposed = set(ports(container).values())
    wanted = {config.gateway_port} if kind == "InferenceService" else \
        {config.port, config.gateway_port, *(config.metrics_port + i for i in range(config.processes))}
    assert exposed == wanted


def test_headless_service_matches_the_server_pods() -> None:
    deployment, service = one("Deployment", "kws-server"), one("Service", "kws-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["clusterIP"] == "None"  # DNS answers each pod: clients balance with round_robin
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    by_name = ports(container)
    for p in service["spec"]["ports"]:
        assert by_name[p["targetPort"]] == p["port"], p
    assert {p["port"] for p in service["spec"]["ports"]} == set(by_name.values())


def test_autoscaler_scales_the_server_on_cpu() -> None:
    hpa = one("HorizontalPodAutoscaler", "kws-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment") and one("Deployment", ref["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_inferenceservice_is_a_v2_custom_predictor_on_one_http_port(etc: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from kws_rpc.serving.server import parse_args

    (isvc,) = find("InferenceService")
    container, argv, env = parsed(isvc, etc, tmp_path, monkeypatch)
    assert container["name"] == "kserve-container"
    assert env["PROTOCOL"] == "v2"  # what KServe reads as a custom predictor's protocol (v1 or v2)
    (port,) = container["ports"]  # KServe routes one port
    # http1: the gateway's REST, where the V2 routes are (h2c would route gRPC to the gateway's port)
    assert port["name"] == "http1" and port["containerPort"] == parse_args(argv[1:]).gateway_port


@pytest.mark.parametrize("kind, name", [("Deployment", "kws-server"), ("InferenceService", "kws")])
def test_probes_answer_on_a_server_started_from_the_manifest(kind: str, name: str, etc: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe paths are the gateway's Open Inference Protocol health routes, on the gateway's port,
    with its scheme, open without a token: asked as the kubelet asks them, they answer 200."""
    from kws_rpc.serving.server import parse_args, serve

    container, argv, _ = parsed(one(kind, name), etc, tmp_path, monkeypatch)
    config = parse_args(argv[1:])
    by_name = ports(container)
    for probe, path in PROBES.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert by_name[get["port"]] == config.gateway_port
        assert get.get("scheme", "HTTP") == ("HTTPS" if config.tls else "HTTP")
    handle = serve(dataclasses.replace(config, host="127.0.0.1", port=0, gateway_port=0, metrics_port=None,
                                       processes=1))
    try:
        assert handle.gateway is not None
        for probe in PROBES:
            get = container[probe]["httpGet"]
            r = requests.get(f"{handle.gateway.url}{get['path']}", timeout=5,
                             verify=str(etc / "certs" / "ca.pem"))  # no Authorization, as the kubelet
            assert r.status_code == 200, (probe, get["path"], r.status_code, r.text[:200])
    finally:
        handle.stop(0)


# --- the broker and the workers ----------------------------------------------------------------------------

def test_mosquitto_runs_deploy_configuration_with_every_file_it_names(etc: Path, tmp_path: Path) -> None:
    config = one("ConfigMap", "kws-mosquitto")["data"]
    assert config["mosquitto.conf"] == (DEPLOY / "mosquitto-secure.conf").read_text()
    assert config["kws.acl"] == (DEPLOY / "mosquitto.acl").read_text()
    deployment = one("Deployment", "kws-mosquitto")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    writable = mount(pod, container, tmp_path, etc)
    argv = container["command"] + container.get("args", [])
    conf = argv[argv.index("-c") + 1]
    assert (tmp_path / conf.lstrip("/")).read_text() == config["mosquitto.conf"]
    settings = dict(ln.split(None, 1) for ln in config["mosquitto.conf"].splitlines()
                    if ln.strip() and not ln.startswith("#") and " " in ln)
    for key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
        assert (tmp_path / settings[key].lstrip("/")).is_file(), f"{key} {settings[key]} is not mounted"
    # the root filesystem is read-only: the persistence directory must be a writable volume of its own
    assert writable[settings["persistence_location"].rstrip("/")], "persistence_location is not writable"
    assert container["securityContext"]["readOnlyRootFilesystem"]
    (listener,) = [v for k, v in settings.items() if k == "listener"]
    service = one("Service", "kws-mosquitto")
    (port,) = service["spec"]["ports"]
    assert int(listener.split()[0]) == ports(container)[port["targetPort"]] == port["port"]
    assert deployment["spec"]["replicas"] == 1  # one broker: the sessions and queued clips live in it


def test_workers_are_replicas_of_each_member_sharing_its_clips(etc: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kws_rpc.mqtt.worker import build_parser

    broker = one("Service", "kws-mosquitto")
    (broker_port,) = broker["spec"]["ports"]
    acl = (DEPLOY / "mosquitto.acl").read_text()
    models, ids = set(), []
    for doc in find("Deployment"):
        if doc["metadata"]["name"].startswith("kws-worker-"):
            pod = pod_of(doc)
            container, argv, env = parsed(doc, etc, tmp_path / doc["metadata"]["name"], monkeypatch)
            a = build_parser().parse_args(argv[1:])
            assert doc["spec"]["replicas"] >= 2
            # each replica a name of its own (the pod's), all voting as the member
            assert a.replica == env["POD_NAME"] and a.replica.startswith(doc["metadata"]["name"])
            assert a.broker == f"mqtts://{broker['metadata']['name']}:{broker_port['port']}"
            assert f"\nuser {a.worker_id}\n" in acl, f"the ACL has no block for {a.worker_id}"
            args = container["args"]
            path = args[args.index("--password-file") + 1]
            (volume,) = [m["name"] for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
            (password,) = [v["secret"] for v in pod["volumes"] if v["name"] == volume]
            (item,) = [i for i in password["items"] if path.endswith("/" + i["path"])]
            assert item["key"] == a.worker_id  # each member logs in with its own password
            models.add(a.model)
            ids.append(a.worker_id)
    assert len(ids) == len(set(ids)), "two Deployments vote as the same member"
    members = json.loads((REPO / "models" / "ensemble.json").read_text())["members"]
    assert models == {f"models/{m}.tflite" for m in members}
