"""Generation on a multi-node Ray cluster on this machine (Ray's ``cluster_utils.Cluster``), with token
authentication on: joining with ``--address`` and a custom resource, a render node lost mid-job, every render
node lost (one-line error, finished shards kept, rerun completes), and a client without the token refused.

The harness: a head with no CPUs (the driver runs there, as on ray_cluster.yaml) and render nodes of 1 CPU +
1 ``render`` each. Renders are tiny (32 px, 2 samples) so the module stays around a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth.dataset.generate import GenerationError, run_generation
from synth.dataset.plan import make_config

ROOT = Path(__file__).resolve().parents[1]
SCENES = 8


def config(num_scenes: int = SCENES):
    return make_config(
        num_scenes,
        seed=11,
        resolution=32,
        samples=2,
        splits={"train": 1.0},
        shard_size=2,
        sampler_overrides={"max_objects": 3, "min_objects": 1},
    )


def hashes(out: Path) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}


@pytest.fixture(scope="module", autouse=True)
def token_auth():
    """RAY_AUTH_MODE=token with Ray's default token (~/.ray/auth_token, generated here if missing)."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE")
    else:
        os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="module")
def cluster():
    """One harness for the module (each start costs ~15 s here); the tests below take its render nodes away
    in turn and add one back."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.nodes = [c.add_node(num_cpus=1, resources={"render": 1}) for _ in range(2)]
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The shards of an undisturbed local run (a private Ray instance, no --address)."""
    out = tmp_path_factory.mktemp("reference")
    run_generation(out, config(), workers=2, progress_interval=60)
    return hashes(out)


def test_address_with_render_resource_then_a_render_node_dies(cluster, reference, tmp_path) -> None:
    """`--address` joins the cluster, the actors take the render resource; one render node dies after three
    scenes and no node replaces it: the job finishes on the survivor, byte-identical, within a bound."""
    lines: list[str] = []
    nodes: set[str] = set()
    killed: list[float] = []

    def on_result(result: dict) -> None:
        nodes.add(result["node"])
        if len(nodes) == 2 and not killed:  # both render nodes are working: take one away
            cluster.remove_node(cluster.nodes.pop(), allow_graceful=False)
            killed.append(time.monotonic())

    summary = run_generation(
        tmp_path,
        config(),
        workers=2,
        address=cluster.address,
        worker_resource="render",
        on_result=on_result,
        log=lines.append,
        progress_interval=1.0,
        placement_timeout=60,
    )
    after_kill = time.monotonic() - killed[0]
    assert killed and len(nodes) == 2
    head = cluster.head_node.node_id
    assert head not in nodes  # the head offers no render resource: no actor ran there
    assert hashes(tmp_path) == reference
    assert summary.scenes_total == SCENES and summary.worker_restarts >= 1
    lost = [ln for ln in lines if " lost " in ln]
    assert len(lost) == 1, lines  # one line per lost worker, not one per scene it held
    assert any("workers 1/2" in ln for ln in lines), lines
    assert after_kill < 45, f"the job took {after_kill:.0f} s after the node loss"


def test_all_render_nodes_lost_is_a_one_line_error_and_the_rerun_completes(
    cluster, reference, tmp_path
) -> None:
    """The render nodes left die after the first shard: no worker can be placed for the bound, the CLI exits 1
    with one line naming the resource, the finished shards stay, and the same command on a cluster that has
    a render node again completes the rest, byte-identical."""
    out = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYOPENGL_PLATFORM="egl", RAY_AUTH_MODE="token")
    cmd = [sys.executable, "-m", "app.cli", "synth", "run", "--out", str(out), "--scenes", str(SCENES)]
    cmd += ["--seed", "11", "--resolution", "32", "--samples", "2", "--split", "train=1", "--shard-size", "2"]
    cmd += ["--max-objects", "3", "--min-objects", "1", "--workers", "2", "--progress-every", "1"]
    cmd += ["--address", cluster.address, "--worker-resource", "render", "--placement-timeout", "12"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (manifest.is_file() and hashes(out)):
        time.sleep(0.2)
    while cluster.nodes:
        cluster.remove_node(cluster.nodes.pop(), allow_graceful=False)
    _, err = proc.communicate(timeout=120)
    errors = [ln for ln in err.splitlines() if ln.startswith("cobl:")]
    assert proc.returncode == 1, err[-2000:]
    assert len(errors) == 1 and "'render'" in errors[0] and "no worker could be placed" in errors[0], errors
    kept = hashes(out)
    assert kept and len(kept) < len(reference) and all(reference[k] == v for k, v in kept.items())

    cluster.nodes.append(cluster.add_node(num_cpus=1, resources={"render": 1}))
    cluster.wait_for_nodes()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert hashes(out) == reference
    assert f"{len(kept)} kept from before" in rerun.stderr


def test_a_node_that_joins_mid_job_grows_the_pool_back(cluster, tmp_path) -> None:
    """One render node live and two workers requested: the second actor waits for a place; a render node that
    joins mid-job gets it, the progress line goes back to 2/2 and both nodes render."""
    while len(cluster.nodes) > 1:
        cluster.remove_node(cluster.nodes.pop(), allow_graceful=False)
    if not cluster.nodes:
        cluster.nodes.append(cluster.add_node(num_cpus=1, resources={"render": 1}))
        cluster.wait_for_nodes()
    lines: list[str] = []
    nodes: set[str] = set()

    def on_result(result: dict) -> None:
        nodes.add(result["node"])
        if len(cluster.nodes) == 1:  # the job is running on one node: a second one joins
            cluster.nodes.append(cluster.add_node(num_cpus=1, resources={"render": 1}))

    summary = run_generation(
        tmp_path,
        config(24),
        workers=2,
        address=cluster.address,
        worker_resource="render",
        on_result=on_result,
        log=lines.append,
        progress_interval=1.0,
        placement_timeout=60,
    )
    assert summary.scenes_total == 24 and summary.scenes_rendered == 24
    totals = json.loads((tmp_path / "manifest.json").read_text())["totals"]
    assert totals["samples"] == 24
    first_full = next(i for i, ln in enumerate(lines) if "workers 2/2" in ln)
    assert any("workers 1/2" in ln for ln in lines[:first_full]), lines  # it started short of a worker
    assert len(nodes) == 2, lines  # the joined node rendered too


@pytest.fixture
def local_ray():
    """A local Ray started the project's way (synth.dataset.generate.ensure_ray)."""
    import ray

    from synth.dataset.generate import ensure_ray

    assert ensure_ray(1, None)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_a_client_without_the_token_is_refused_and_an_impossible_resource_fails(local_ray, tmp_path) -> None:
    """ensure_ray's local instance has token auth on: a client holding no token, or a wrong one, cannot
    connect; one with the token can. On it, a worker resource no node offers fails after the bound."""
    probe = f"import ray; ray.init(address={local_ray!r}); print('CONNECTED')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    (tmp_path / "wrong").write_text("0" * 64)
    for name, extra in {
        "no token": {"HOME": str(tmp_path)},
        "wrong token": {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "wrong")},
        "the token": {},
    }.items():
        res = subprocess.run(
            [sys.executable, "-c", probe], env=env | extra, capture_output=True, text=True, timeout=60
        )
        if name == "the token":
            assert res.returncode == 0 and "CONNECTED" in res.stdout, res.stderr[-2000:]
        else:
            assert res.returncode != 0 and "CONNECTED" not in res.stdout, (name, res.stderr[-2000:])
            assert "token" in res.stderr.lower(), (name, res.stderr[-2000:])

    t0 = time.monotonic()
    with pytest.raises(
        GenerationError, match="no worker could be placed for 2 s: no live node offers .*'gpu_r'"
    ):
        run_generation(tmp_path / "out", config(2), worker_resource="gpu_r", placement_timeout=2, log=print)
    assert time.monotonic() - t0 < 30
