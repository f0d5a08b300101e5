"""ray_cluster.yaml is a real cluster-launcher config: Ray's own defaults filling and validation pass."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared() -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)  # raises jsonschema.ValidationError / ValueError on a bad config
    return config


def test_validates_with_rays_validator(prepared: dict) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_has_head_cpu_render_and_gpu_training_nodes(prepared: dict) -> None:
    types = prepared["available_node_types"]
    render = [t for t in types.values() if t["resources"].get("render", 0) > 0]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert render and all(t["resources"].get("GPU", 0) == 0 for t in render)
    assert gpu
    assert sum(t.get("max_workers", 0) for t in types.values()) >= 2


def test_setup_installs_the_project_from_the_file_mount(prepared: dict) -> None:
    mounts = prepared["file_mounts"]
    assert "." in mounts.values()
    remote = next(k for k, v in mounts.items() if v == ".")
    assert any("make install" in c for c in prepared["setup_commands"])
    assert any(Path(remote).name in c for c in prepared["setup_commands"])


def test_broken_config_is_rejected() -> None:
    """The validator really validates: an unknown top-level field fails."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    raw["not_a_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def test_token_auth_is_on_and_the_dashboard_is_not_open(prepared: dict) -> None:
    """Every node starts Ray with RAY_AUTH_MODE=token; the token reaches each node through file_mounts from
    outside the checkout (never committed); the dashboard/Jobs API binds to the head's localhost only."""
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    head = next(c for c in prepared["head_start_ray_commands"] if "ray start" in c)
    assert "0.0.0.0" not in head and "--dashboard-host=127.0.0.1" in head
    token = {remote: local for remote, local in prepared["file_mounts"].items() if "auth_token" in remote}
    assert token == {"/home/ubuntu/.ray/auth_token": "~/.ray/auth_token"}
    assert not Path(next(iter(token.values()))).expanduser().resolve().is_relative_to(ROOT)


def test_has_a_gpu_render_worker_type(prepared: dict) -> None:
    """`cobl synth run --device gpu --worker-resource render_gpu`: actors asking for one GPU and one
    render_gpu land on these nodes, one per GPU."""
    types = prepared["available_node_types"]
    gpu_render = [t for t in types.values() if t["resources"].get("render_gpu", 0) > 0]
    assert gpu_render
    assert all(t["resources"]["render_gpu"] <= t["resources"]["GPU"] for t in gpu_render)
