"""The deployment examples in deploy/ against the image's contract, without Docker or a cluster.

The image (the repository's Dockerfile, tagged edge:latest): entrypoint `edge`, command `serve
--config /etc/edge/edge.toml`, user edge (uid 10001), read-only root filesystem with /var/cache/edge
writable and /var/www as content, ports 8080 (HTTP) and 9090 (admin), EDGE_ADMIN / EDGE_ADMIN_TOKEN
from the environment, GET /healthz on the admin port (200 serving, 503 draining), POST /drain,
`edge purge --fleet NAME:9090` over every address of NAME.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from edge.config import ConfigError, from_mapping, load

yaml = pytest.importorskip("yaml")  # PyYAML: the test extra's "pyyaml"

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
EDGE_TOML = DEPLOY / "edge.toml"

IMAGE = "edge:latest"
UID = 10001
HTTP_PORT = 8080
ADMIN_PORT = 9090
CONFIG_DIR = "/etc/edge"
CACHE_DIR = "/var/cache/edge"
CONTENT_DIR = "/var/www"
EXAMPLES = {"secret.example.yaml", "purge-job.yaml"}  # applied by hand, not by the kustomization


# ---------------------------------------------------------------- helpers


def load_yaml(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_objects() -> list[tuple[str, dict]]:
    """(file name, object) for every Kubernetes object under deploy/k8s (the kustomization excluded)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml(path):
            if doc.get("kind") != "Kustomization":
                out.append((path.name, doc))
    return out


def k8s(kind: str, name: str | None = None) -> dict:
    """The one object of this kind (and name)."""
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind
             and (name is None or doc["metadata"].get("name") == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def edge_deployment() -> dict:
    return k8s("Deployment", "edge")


def edge_container(deployment: dict | None = None) -> dict:
    containers = (deployment or edge_deployment())["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["image"] == IMAGE]
    assert len(found) == 1, "the Deployment runs the edge image in exactly one container"
    return found[0]


def container_port(container: dict, port: int | str) -> int:
    """A probe's or a Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not a named port of container {container['name']}")


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def effective_security(pod_spec: dict, container: dict, key: str):
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext") or {}
    return own[key] if key in own else (pod_spec.get("securityContext") or {}).get(key)


def compose() -> dict:
    docs = load_yaml(DEPLOY / "compose.yaml")
    assert len(docs) == 1
    return docs[0]


def service(name: str) -> dict:
    services = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    return services[name]


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def compose_duration(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Compose duration: {text!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def compose_ports(svc: dict) -> list[tuple[str | None, int]]:
    """(published host port or range, container port) of each port mapping, short or long syntax."""
    out = []
    for item in svc.get("ports", []):
        if isinstance(item, dict):
            published = item.get("published")
            out.append((None if published in (None, "") else str(published), int(item["target"])))
            continue
        spec = str(item).split("/")[0]
        fields = spec.rsplit(":", 2)
        target = fields[-1]
        published = fields[-2] if len(fields) >= 2 else None
        assert "-" not in target, "one container port per mapping"
        out.append((published or None, int(target)))
    return out


def mounts(svc: dict) -> dict[str, str]:
    """Container path -> kind ('tmpfs', 'bind', 'volume', 'anonymous') for a Compose service."""
    out = {}
    tmpfs = svc.get("tmpfs") or []
    for item in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
        out[item.split(":")[0]] = "tmpfs"
    for item in svc.get("volumes") or []:
        if isinstance(item, dict):
            out[item["target"]] = "anonymous" if item["type"] == "volume" and not item.get("source") else item["type"]
            continue
        fields = item.split(":")
        if len(fields) == 1:
            out[fields[0]] = "anonymous"
        else:
            out[fields[1]] = "bind" if fields[0].startswith((".", "/", "~")) else "volume"
    return out


def bind_source(svc: dict, target: str) -> Path:
    for item in svc.get("volumes") or []:
        if isinstance(item, dict) and item.get("target") == target and item.get("type") == "bind":
            return (DEPLOY / item["source"]).resolve()
        if isinstance(item, str) and item.split(":")[1:2] == [target]:
            return (DEPLOY / item.split(":")[0]).resolve()
    raise AssertionError(f"no bind mount at {target}")


def edge_services() -> dict[str, dict]:
    """The Compose services that run the edge image."""
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == IMAGE}


def toml_texts() -> dict[str, str]:
    """The edge configs the deployments mount: deploy/edge.toml and the ConfigMap's copy."""
    configmap = k8s("ConfigMap", "edge-config")
    return {"deploy/edge.toml": EDGE_TOML.read_text(), "k8s ConfigMap edge-config": configmap["data"]["edge.toml"]}


def deploy_config():
    return from_mapping(tomllib.loads(EDGE_TOML.read_text()))


def origin_hosts(text: str) -> set[str]:
    return {urlsplit(o.url).hostname for o in from_mapping(tomllib.loads(text)).origins}


def prestop_command() -> list[str]:
    hook = edge_container()["lifecycle"]["preStop"]
    assert "exec" in hook, "the preStop hook runs a command in the container (the image has no curl)"
    return hook["exec"]["command"]


def prestop_sleep() -> float:
    script = " ".join(prestop_command())
    m = re.search(r"time\.sleep\((\d+(?:\.\d+)?)\)|\bsleep (\d+)", script)
    assert m, "the preStop hook sleeps after draining, while endpoints and load balancers catch up"
    return float(m.group(1) or m.group(2))


# ---------------------------------------------------------------- the edge config


@pytest.mark.parametrize("where", ["deploy/edge.toml", "k8s ConfigMap edge-config"])
def test_edge_config_validates(where):
    config = from_mapping(tomllib.loads(toml_texts()[where]))
    assert config.root == CONTENT_DIR
    assert config.port == HTTP_PORT
    assert config.cache.dir == CACHE_DIR
    assert config.origins, "the deployments pull from origins"
    # Loopback in the file: the deployments open it with EDGE_ADMIN and EDGE_ADMIN_TOKEN.
    assert config.admin is None or config.admin[0] in ("127.0.0.1", "::1", "localhost")
    assert config.admin_token is None, "the token comes from the environment (a Secret), not the file"
    assert isinstance(config.workers, int), "containers size workers to their CPU limit, not the host's CPUs"


def test_configmap_is_a_copy_of_deploy_edge_toml():
    texts = toml_texts()
    assert texts["k8s ConfigMap edge-config"] == texts["deploy/edge.toml"], \
        "deploy/k8s/configmap.yaml's edge.toml must stay a verbatim copy of deploy/edge.toml"


@pytest.mark.parametrize("where", ["deploy/edge.toml", "k8s ConfigMap edge-config"])
def test_edge_config_loads_with_the_deployment_environment(where, tmp_path, monkeypatch):
    """What `edge serve` does in the container: the file, then EDGE_ADMIN/EDGE_ADMIN_TOKEN over it."""
    path = tmp_path / "edge.toml"
    path.write_text(toml_texts()[where])
    overrides = {"root": str(tmp_path)}  # /var/www exists in the image, not here
    monkeypatch.setenv("EDGE_ADMIN", f"0.0.0.0:{ADMIN_PORT}")
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "a-test-token")
    config = load(str(path), overrides)
    assert config.admin == ("0.0.0.0", ADMIN_PORT)
    assert config.admin_token == "a-test-token"
    assert config.cache.dir == CACHE_DIR
    # Without the token edge refuses the non-loopback admin address: the token wiring is load-bearing.
    monkeypatch.delenv("EDGE_ADMIN_TOKEN")
    with pytest.raises(ConfigError, match="admin"):
        load(str(path), overrides)
    # And with neither variable the file alone is valid (loopback admin).
    monkeypatch.delenv("EDGE_ADMIN")
    assert load(str(path), overrides).admin[1] == ADMIN_PORT


def test_check_config_accepts_deploy_edge_toml(tmp_path):
    """`edge check-config` on a copy whose root exists (origin names are not resolved)."""
    text = EDGE_TOML.read_text()
    assert re.search(r'^root = "/var/www"$', text, re.MULTILINE)
    path = tmp_path / "edge.toml"
    path.write_text(re.sub(r'^root = .*$', f'root = "{tmp_path}"', text, flags=re.MULTILINE))
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_ADMIN", "EDGE_ADMIN_TOKEN")}
    env.update(EDGE_ADMIN=f"0.0.0.0:{ADMIN_PORT}", EDGE_ADMIN_TOKEN="a-test-token")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(path)], check=False,
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": ok")


def test_shutdown_timeout_fits_the_grace_periods():
    shutdown = deploy_config().shutdown_timeout
    grace = compose_duration(service("edge")["stop_grace_period"])
    assert grace > shutdown, f"Compose stop_grace_period {grace} s must exceed shutdown_timeout {shutdown} s"
    pod = edge_deployment()["spec"]["template"]["spec"]
    budget = pod["terminationGracePeriodSeconds"]
    assert budget > prestop_sleep() + shutdown, \
        f"terminationGracePeriodSeconds {budget} must cover the preStop sleep and shutdown_timeout {shutdown}"


def test_cache_limit_fits_the_cache_volumes():
    max_size = deploy_config().cache.max_size
    for item in service("edge")["tmpfs"]:
        if item.split(":")[0] == CACHE_DIR and "size=" in item:
            size = re.search(r"size=(\d+)([kmg]?)", item).groups()
            limit = int(size[0]) << {"": 0, "k": 10, "m": 20, "g": 30}[size[1]]
            assert max_size < limit, "cache.max_size must leave room in the tmpfs for temp files"
    cache = next(v for v in edge_deployment()["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache")
    limit = cache.get("emptyDir", {}).get("sizeLimit")
    if limit:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limit).groups()
        assert max_size < int(number) << {"Mi": 20, "Gi": 30}[unit], "an emptyDir over its sizeLimit evicts the pod"


# ---------------------------------------------------------------- Docker Compose


def test_compose_services():
    services = compose()["services"]
    assert {"edge", "purge", "origin-a", "origin-b"} <= set(services)


def test_compose_edge_is_built_from_the_repository():
    edge = service("edge")
    assert edge["image"] == IMAGE
    build = edge["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (DEPLOY / context).resolve() == REPO, "the build context is the repository root (its Dockerfile)"
    assert "dockerfile" not in (build if isinstance(build, dict) else {}), "the repository's own Dockerfile"
    assert "command" not in edge and "entrypoint" not in edge and "user" not in edge, \
        "the image's own entrypoint, command (serve --config /etc/edge/edge.toml) and user"


def test_compose_edge_runs_two_replicas_without_a_fixed_host_port():
    edge = service("edge")
    replicas = (edge.get("deploy") or {}).get("replicas", edge.get("scale"))
    assert replicas == 2
    assert "container_name" not in edge, "a fixed container name allows one replica only"
    published = [pub for pub, target in compose_ports(edge) if target == HTTP_PORT]
    assert published, "the HTTP port is published (on a free host port per replica)"
    for pub in published:
        if pub is not None:
            low, _, high = pub.partition("-")
            assert high and int(high) - int(low) + 1 >= replicas, \
                f"host port {pub}: two replicas cannot share one host port (leave it out, or give a range)"
    assert all(target != ADMIN_PORT for _, target in compose_ports(edge)), "the admin port is not published"


def test_compose_edge_healthcheck_uses_admin_healthz():
    check = service("edge")["healthcheck"]
    test = check["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    text = " ".join(test[1:])
    assert f"127.0.0.1:{ADMIN_PORT}/healthz" in text
    assert "curl" not in text and "wget" not in text, "the image has python, not curl"
    assert test[1].startswith("python"), "a python one-liner"
    compile(test[test.index("-c") + 1], "healthcheck", "exec")  # the one-liner is valid Python
    assert compose_duration(check["interval"]) <= 30


def test_compose_edge_read_only_with_a_cache_per_replica():
    edge = service("edge")
    assert edge["read_only"] is True
    kinds = mounts(edge)
    assert kinds.get(CACHE_DIR) in ("tmpfs", "anonymous"), \
        "each replica needs its own cache: a tmpfs or an anonymous volume, not a shared named volume"
    for item in edge.get("tmpfs") or []:
        if item.split(":")[0] == CACHE_DIR:
            options = dict(o.partition("=")[::2] for o in item.partition(":")[2].split(",") if o)
            assert options.get("uid") == str(UID), \
                "a tmpfs is root's (with the mode of the image's directory): give it to the image's user"
    assert kinds.get(f"{CONFIG_DIR}/edge.toml") == "bind"
    assert bind_source(edge, f"{CONFIG_DIR}/edge.toml") == EDGE_TOML
    assert set(edge.get("cap_drop") or []) == {"ALL"}


def test_compose_admin_token_wiring():
    edge = service("edge")
    env = env_of(edge)
    assert env["EDGE_ADMIN"] == f"0.0.0.0:{ADMIN_PORT}"
    m = re.fullmatch(r"\$\{EDGE_ADMIN_TOKEN:-([^}]+)\}", env["EDGE_ADMIN_TOKEN"])
    assert m, "EDGE_ADMIN_TOKEN comes from the caller's environment, with a default"
    from_mapping({"admin_token": m.group(1)})  # the default is a token edge accepts
    for name, svc in edge_services().items():
        assert env_of(svc).get("EDGE_ADMIN_TOKEN") == env["EDGE_ADMIN_TOKEN"], f"{name}: the same token"


def test_compose_edge_waits_for_healthy_origins():
    edge = service("edge")
    hosts = origin_hosts(EDGE_TOML.read_text())
    depends = edge["depends_on"]
    for host in hosts:
        assert depends[host]["condition"] == "service_healthy"
        origin = service(host)
        assert origin["healthcheck"]["test"], f"{host} has a healthcheck"
        content = bind_source(origin, "/usr/share/nginx/html")
        path = deploy_config().health.path
        assert (content / path.lstrip("/")).is_file(), f"the origins serve edge's health path {path}"


def test_compose_origin_service_names_match_the_config():
    services = compose()["services"]
    origins = {name for name, svc in services.items() if svc.get("image") != IMAGE}
    assert origin_hosts(EDGE_TOML.read_text()) == origins
    for url in (o.url for o in deploy_config().origins):
        port = urlsplit(url).port or 80
        assert port == 80, "the nginx origins listen on 80"


def test_compose_purge_service_purges_the_fleet():
    purge = service("purge")
    assert purge["image"] == IMAGE
    assert purge.get("profiles"), "a one-shot tool, not started by `docker compose up`"
    command = purge["command"]
    command = command.split() if isinstance(command, str) else command
    assert command[0] == "purge", "the entrypoint is edge: the command starts with the subcommand"
    fleet = command[command.index("--fleet") + 1]
    assert fleet == f"edge:{ADMIN_PORT}", "the edge service's name resolves to every replica"
    assert "--all" in command
    assert env_of(purge)["EDGE_ADMIN_TOKEN"]


# ---------------------------------------------------------------- Kubernetes


def test_k8s_files_parse_and_the_kustomization_lists_them():
    objects = k8s_objects()
    assert objects
    for path, doc in objects:
        assert doc.get("apiVersion") and doc.get("kind"), path
        meta = doc["metadata"]
        assert meta.get("name") or meta.get("generateName"), path
        assert "namespace" not in meta, f"{path}: the manifests use the current namespace"
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - EXAMPLES, "every manifest but the examples is in the kustomization"
    assert EXAMPLES <= files


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_k8s_kustomization_builds():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    assert {("Deployment", "edge"), ("Service", "edge"), ("Service", "edge-fleet"),
            ("ConfigMap", "edge-config")} <= kinds


def test_k8s_deployment_runs_the_image_as_uid_10001_read_only():
    deployment = edge_deployment()
    pod = deployment["spec"]["template"]["spec"]
    container = edge_container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert container.get("imagePullPolicy") in ("IfNotPresent", "Never"), \
        ":latest defaults to Always, which cannot pull an image that was only loaded into the cluster"
    assert "command" not in container and "args" not in container, "the image's own serve command"
    assert effective_security(pod, container, "runAsNonRoot") is True
    assert effective_security(pod, container, "runAsUser") == UID
    assert effective_security(pod, container, "readOnlyRootFilesystem") is True
    assert effective_security(pod, container, "allowPrivilegeEscalation") is False
    assert pod.get("enableServiceLinks") is False, "Service links would add EDGE_* variables to the environment"
    ports = {p["containerPort"] for p in container["ports"]}
    assert {HTTP_PORT, ADMIN_PORT} <= ports


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_k8s_probes_use_admin_healthz(probe):
    container = edge_container()
    get = container[probe]["httpGet"]
    assert get["path"] == "/healthz"
    assert container_port(container, get["port"]) == ADMIN_PORT
    assert "httpHeaders" not in get, "/healthz needs no token"


def test_k8s_prestop_drains_then_waits():
    command = prestop_command()
    script = " ".join(command)
    assert "/drain" in script and f"127.0.0.1:{ADMIN_PORT}" in script
    assert "POST" in script
    assert "EDGE_ADMIN_TOKEN" in script, "POST /drain needs the token, from the container's environment"
    assert "curl" not in script and "wget" not in script, "the image has python, not curl"
    if command[0].startswith("python") and "-c" in command:
        compile(command[command.index("-c") + 1], "preStop", "exec")  # valid Python
    assert 1 <= prestop_sleep() <= 30


def test_k8s_deployment_mounts():
    deployment = edge_deployment()
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    by_path = {m["mountPath"]: m for m in edge_container(deployment)["volumeMounts"]}
    assert {CONFIG_DIR, CACHE_DIR, CONTENT_DIR} <= set(by_path)
    config = volumes[by_path[CONFIG_DIR]["name"]]
    assert config["configMap"]["name"] == "edge-config"
    assert "subPath" not in by_path[CONFIG_DIR], "the whole directory, so ConfigMap updates reach the pod"
    assert "edge.toml" in k8s("ConfigMap", config["configMap"]["name"])["data"]
    cache = volumes[by_path[CACHE_DIR]["name"]]
    assert "emptyDir" in cache, "each pod its own cache"
    assert not by_path[CACHE_DIR].get("readOnly"), "the cache is written"
    assert by_path[CONTENT_DIR]["name"] in volumes


def test_k8s_admin_env_and_secret():
    container = edge_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGE_ADMIN"]["value"] == f"0.0.0.0:{ADMIN_PORT}"
    ref = env["EDGE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = k8s("Secret", ref["name"])
    token = (secret.get("stringData") or {}).get(ref["key"])
    assert token or ref["key"] in (secret.get("data") or {}), "the example Secret has the key the pods read"
    if token:
        from_mapping({"admin_token": token})


def test_k8s_services_select_the_edge_pods():
    deployment = edge_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    container = edge_container(deployment)
    traffic = k8s("Service", "edge")
    assert selects(traffic["spec"]["selector"], labels), "the traffic Service's selector is a subset of the pod labels"
    assert traffic["spec"].get("clusterIP") != "None"
    assert [container_port(container, p.get("targetPort", p["port"])) for p in traffic["spec"]["ports"]] == [HTTP_PORT]
    headless = [doc for _, doc in k8s_objects() if doc["kind"] == "Service" and doc["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1
    fleet = headless[0]
    assert selects(fleet["spec"]["selector"], labels)
    assert [container_port(container, p.get("targetPort", p["port"])) for p in fleet["spec"]["ports"]] == [ADMIN_PORT]
    assert fleet["spec"].get("publishNotReadyAddresses") is True, "draining nodes still serve: purge them too"
    pdb = k8s("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)


def test_k8s_services_select_only_the_edge_pods():
    """The purge Job's and the origins' pods must not land in the edge Services' endpoints."""
    edge_services_ = [k8s("Service", "edge"), k8s("Service", "edge-fleet")]
    for path, doc in k8s_objects():
        if doc["kind"] in ("Deployment", "Job") and doc["metadata"].get("name") != "edge":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            for svc in edge_services_:
                assert not selects(svc["spec"]["selector"], labels), \
                    f"Service {svc['metadata']['name']} would select the pods of {path} {doc['kind']}"


def test_k8s_purge_job_uses_the_headless_service():
    job = k8s("Job")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    args = container.get("args") or container["command"][1:]
    assert args[0] == "purge"
    fleet = args[args.index("--fleet") + 1]
    name, _, port = fleet.partition(":")
    assert k8s("Service", name)["spec"]["clusterIP"] == "None", "--fleet names the headless Service"
    assert int(port or ADMIN_PORT) == ADMIN_PORT
    assert "--all" in args
    env = {e["name"]: e for e in container["env"]}
    deployment_env = {e["name"]: e for e in edge_container()["env"]}
    assert env["EDGE_ADMIN_TOKEN"] == deployment_env["EDGE_ADMIN_TOKEN"], "the same Secret as the nodes"
    assert effective_security(pod, container, "runAsUser") == UID
    assert effective_security(pod, container, "readOnlyRootFilesystem") is True


def test_k8s_origins_match_the_config():
    hosts = origin_hosts(toml_texts()["k8s ConfigMap edge-config"])
    for host in hosts:
        svc = k8s("Service", host)
        assert [p["port"] for p in svc["spec"]["ports"]] == [80], f"edge.toml's http://{host} means port 80"
        pods = [doc for _, doc in k8s_objects() if doc["kind"] == "Deployment"
                and selects(svc["spec"]["selector"], doc["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, f"Service {host} selects one demo origin Deployment"
    content = k8s("ConfigMap", "origin-content")["data"]
    files = {p.name: p.read_text() for p in (DEPLOY / "origin-content").iterdir()}
    assert content == files, "origins.yaml's origin-content is a copy of deploy/origin-content"
