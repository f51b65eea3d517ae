"""cluster.yaml against the autoscaler schema shipped in the installed ray package, plus what the
service needs of it; and the head's store script, run for real."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import redis
import yaml

from tests.conftest import REPO_ROOT
from tests.local_cluster import free_port

SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def validate(config: dict) -> None:
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))


def test_cluster_yaml_validates_against_rays_schema(cluster_config):
    assert SCHEMA.is_file()
    validate(cluster_config)
    # What `ray up` does before contacting the cloud: fill in the provider's defaults, then
    # validate the result (the schema again, plus node-type consistency).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster_config)))


@pytest.mark.parametrize("breakage", ["node type without resources", "provider without type", "unknown top-level key"])
def test_the_validation_rejects_broken_configs(cluster_config, breakage):
    broken = copy.deepcopy(cluster_config)
    if breakage == "node type without resources":
        del broken["available_node_types"]["gpu_worker"]["resources"]
    elif breakage == "provider without type":
        del broken["provider"]["type"]
    else:
        broken["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_node_types_head_cpu_and_gpu_workers(cluster_config):
    types = cluster_config["available_node_types"]
    assert cluster_config["head_node_type"] == "head" and set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert types["head"]["resources"] == {"CPU": 0}  # replicas and pipeline tasks run on workers
    assert types["cpu_worker"]["min_workers"] >= 2 and types["cpu_worker"]["max_workers"] > types["cpu_worker"]["min_workers"]
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert sum(t.get("max_workers", 0) for name, t in types.items() if name != "head") == cluster_config["max_workers"]


def test_every_node_installs_the_project(cluster_config):
    assert cluster_config["file_mounts"] == {"~/rag-service": "."}
    assert ".venv" in cluster_config["rsync_exclude"]
    commands = cluster_config["setup_commands"] + cluster_config["available_node_types"]["gpu_worker"]["worker_setup_commands"]
    for command in commands:
        assert "scripts/cluster_node_setup.sh" in command and "TORCH_SPEC=" in command
    assert "whl/cpu" in cluster_config["setup_commands"][0]  # CPU nodes skip the CUDA build
    setup = (REPO_ROOT / "scripts" / "cluster_node_setup.sh").read_text()
    assert "pip install --quiet -e ." in setup and "TORCH_SPEC" in setup


def test_ports_and_shared_store_addresses(cluster_config):
    head = " ".join(cluster_config["head_start_ray_commands"])
    worker = " ".join(cluster_config["worker_start_ray_commands"])
    assert "--port=6380" in head and "--address=$RAY_HEAD_IP:6380" in worker  # 6379 is Redis
    assert "cluster_services.sh start" in head
    for start in (head, worker):
        assert "RAG_CHROMA_URL=http://" in start and ":8001" in start and "RAG_REDIS_URL=redis://" in start and ":6379/0" in start
        assert "--metrics-export-port=8080" in start
    serve = yaml.safe_load((REPO_ROOT / "configs" / "serve-cluster.yaml").read_text())
    opened = {rule["FromPort"] for rule in cluster_config["provider"]["security_group"]["IpPermissions"]}
    assert serve["http_options"]["port"] in opened and serve["http_options"]["host"] == "0.0.0.0"


def test_head_store_script_starts_chroma_and_redis(tmp_path):
    chroma_port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(tmp_path),
        "RAG_CHROMA_PORT": str(chroma_port),
        "RAG_REDIS_PORT": str(redis_port),
        "RAG_SERVICES_BIND": "127.0.0.1",
    }
    script = str(REPO_ROOT / "scripts" / "cluster_services.sh")
    try:
        started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        again = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr  # idempotent
        assert redis.Redis(port=redis_port).ping()
        import chromadb

        client = chromadb.HttpClient(host="127.0.0.1", port=chroma_port)
        client.create_collection("probe")
        assert (tmp_path / "chroma").is_dir() and [c.name for c in client.list_collections()] == ["probe"]
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)
    probe = subprocess.run(shlex.split(f"redis-cli -p {redis_port} ping"), capture_output=True, text=True)
    assert probe.stdout.strip() != "PONG"


@pytest.mark.parametrize("name", ["serve.yaml", "serve-cluster.yaml"])
def test_serve_configs_validate_against_serves_schema(name):
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO_ROOT / "configs" / name).read_text()))
    deployments = {d.name for d in config.applications[0].deployments}
    assert deployments == {"Ingress", "Embedder", "Retriever", "Reranker", "Generator"}
