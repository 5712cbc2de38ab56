"""cluster.yaml against the cluster-launcher JSON schema that ships inside the ray package."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_is_a_valid_aws_launcher_config() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)

    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # a CPU head: it runs the driver only
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    markets = {t["node_config"].get("InstanceMarketOptions", {}).get("MarketType", "on-demand") for t in gpu.values()}
    assert markets == {"on-demand", "spot"}
    assert sum(t["max_workers"] for t in gpu.values()) <= config["max_workers"]
    assert any("pip install" in c and "dit-worker" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()  # this repository is what gets installed
