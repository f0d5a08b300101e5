"""Generation on a multi-node Ray cluster on this machine (Ray's ``cluster_utils.Cluster``), with token
authentication on: joining with ``--address`` and a custom resource, a render node lost mid-job, every render
node lost (an error naming the resource, finished shards kept, rerun completes), a node joining mid-job,
workers that cannot start on a node (the node skipped after a cap), and a client without the token refused.

Every node loss happens by construction, not by the clock: ``run_generation``'s ``on_result`` runs on the
driver with the job held, so a node dies at a known point (while its worker holds a scene, or before the
last scene), whatever the load on the machine.

The harness: a head with no CPUs (the driver runs there, as on ray_cluster.yaml) and render nodes of 1 CPU +
1 ``render`` each. Renders are tiny (32 px, 2 samples) so the module stays around a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth.dataset.generate import GenerationError, run_generation
from synth.dataset.plan import make_config

ROOT = Path(__file__).resolve().parents[1]
SCENES = 8
# --placement-timeout where a test waits for it to run out: longer than a worker process takes to start on a
# loaded machine (the clock stops once Ray has started a worker's process), paid once after the loss
BOUND = 30


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
    """`--address` joins the cluster, the actors take the render resource; the render node of the first
    scene that comes back dies while the job is held there (its actor holds two scenes by construction: the
    pool refills it before the result is handed on), and no node replaces it: the scenes it held go back to
    the queue, and the job finishes on the survivor, byte-identical."""
    lines: list[str] = []
    killed: list[str] = []
    after: set[str] = set()  # the nodes that returned scenes after the kill

    def on_result(result: dict) -> None:
        if killed:
            after.add(result["node"])
            return
        victim = next(n for n in cluster.nodes if n.node_id == result["node"])
        cluster.nodes.remove(victim)
        cluster.remove_node(victim, allow_graceful=False)
        killed.append(victim.node_id)

    summary = run_generation(
        tmp_path,
        config(),
        workers=2,
        address=cluster.address,
        worker_resource="render",
        on_result=on_result,
        log=lines.append,
        progress_interval=1.0,
        placement_timeout=300,  # a bound for a stuck job only: one worker stays live throughout
    )
    # The survivor did the rest. (A scene the dead node had already finished may still arrive: a small result
    # lives in the driver's memory store, so on an idle, fast machine the dead node can appear in ``after``.)
    survivors = {n.node_id for n in cluster.nodes} - {cluster.head_node.node_id}
    assert killed and survivors and survivors <= after and killed[0] not in survivors
    assert cluster.head_node.node_id not in after | set(killed)  # the head offers no render resource
    assert hashes(tmp_path) == reference
    assert summary.scenes_total == SCENES and summary.worker_restarts >= 1
    lost = [ln for ln in lines if " lost " in ln]
    from synth.dataset.pool import SCENES_PER_ACTOR  # refilled before on_result runs: the actor held these

    back = [int(m) for m in re.findall(r"(\d+) scene\(s\) back to the queue", " ".join(lost))]
    assert len(lost) == 1 and back and back[0] <= SCENES_PER_ACTOR, lines
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["cost"]["worker_restarts"] == summary.worker_restarts
    assert manifest["cost"]["failure_causes"] and manifest["cost"]["failed_attempts"] == summary.failures


def test_all_render_nodes_lost_is_an_error_naming_the_resource_and_the_rerun_completes(
    cluster, reference, tmp_path
) -> None:
    """The render nodes left die once a shard is recorded, while the job is held on a scene that is not the
    last (so it cannot finish): no worker can be placed for the bound, the job stops with an error naming
    the resource, the finished shards stay, and the same command on a cluster that has a render node
    again completes the rest, byte-identical."""
    out = tmp_path / "data"
    seen: list[int] = []

    def on_result(result: dict) -> None:
        seen.append(result["index"])
        if cluster.nodes and (out / "manifest.json").is_file() and hashes(out):
            assert len(seen) < SCENES  # 4 pairs: one is complete after 5 scenes at the latest
            while cluster.nodes:
                cluster.remove_node(cluster.nodes.pop(), allow_graceful=False)

    with pytest.raises(GenerationError) as failed:
        run_generation(
            out, config(), workers=2, address=cluster.address, worker_resource="render",
            on_result=on_result, log=lambda s: None, progress_interval=1.0, placement_timeout=BOUND,
        )  # fmt: skip
    assert f"placed for {BOUND} s: no live node offers 1 CPU and 1 'render'" in str(failed.value)
    kept = hashes(out)
    assert kept and len(kept) < len(reference) and all(reference[k] == v for k, v in kept.items())

    cluster.nodes.append(cluster.add_node(num_cpus=1, resources={"render": 1}))
    cluster.wait_for_nodes()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYOPENGL_PLATFORM="egl", RAY_AUTH_MODE="token")
    cmd = [sys.executable, "-m", "app.cli", "synth", "run", "--out", str(out), "--scenes", str(SCENES)]
    cmd += ["--seed", "11", "--resolution", "32", "--samples", "2", "--split", "train=1", "--shard-size", "2"]
    cmd += ["--max-objects", "3", "--min-objects", "1", "--workers", "2", "--progress-every", "1"]
    cmd += ["--address", cluster.address, "--worker-resource", "render", "--placement-timeout", "300"]
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert hashes(out) == reference
    assert f"{len(kept)} kept from before" in rerun.stderr
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert len(runs) == 2 and sum(r["scenes_rendered"] for r in runs) >= SCENES  # both runs' cost


def _alive_render_worker_on(node_id: str) -> bool:
    from ray._private import state

    return any(
        a.get("State") == "ALIVE" and a.get("ActorClassName") == "RenderWorker"
        and a.get("Address", {}).get("NodeID") == node_id
        for a in state.actors().values()
    )  # fmt: skip


def test_a_node_that_joins_mid_job_grows_the_pool_back(cluster, tmp_path) -> None:
    """One render node live and two workers requested: the second actor waits for a place. At the first
    scene a render node joins, and the job is held until the waiting actor has started there (and for one
    progress interval, so a progress line shows the pool short of a worker); then the progress lines go
    back to 2/2 and both nodes render."""
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
            joined = cluster.add_node(num_cpus=1, resources={"render": 1})
            cluster.nodes.append(joined)
            held = time.monotonic()
            while not _alive_render_worker_on(joined.node_id) or time.monotonic() - held < 1.0:
                assert time.monotonic() - held < 600, "the waiting worker never started on the joined node"
                time.sleep(0.1)

    summary = run_generation(
        tmp_path,
        config(24),
        workers=2,
        address=cluster.address,
        worker_resource="render",
        on_result=on_result,
        log=lines.append,
        progress_interval=1.0,
        placement_timeout=300,
    )
    assert summary.scenes_total == 24 and summary.scenes_rendered == 24
    totals = json.loads((tmp_path / "manifest.json").read_text())["totals"]
    assert totals["samples"] == 24
    first_full = next(i for i, ln in enumerate(lines) if "workers 2/2" in ln)
    assert any("workers 1/2" in ln for ln in lines[:first_full]), lines  # it started short of a worker
    assert len(nodes) == 2, lines  # the joined node rendered too


def _has_gpu() -> bool:
    probe = subprocess.run(["sh", "-c", "command -v nvidia-smi && nvidia-smi -L"], capture_output=True)
    return probe.returncode == 0


def test_workers_that_fail_to_start_on_a_node_get_it_skipped_and_the_job_finishes_on_the_others(cluster):
    """A worker class that cannot start on one node (as a GPU worker on a node whose GPU Cycles cannot use):
    after MAX_START_FAILURES_PER_NODE failures there the node is skipped with one line, no later worker is
    placed on it, and every scene is rendered on the other node."""
    import ray

    from synth.dataset.pool import MAX_START_FAILURES_PER_NODE, RenderPool
    from synth.dataset.progress import Progress
    from synth.dataset.worker import WorkerStartError

    while len(cluster.nodes) > 2:
        cluster.remove_node(cluster.nodes.pop(), allow_graceful=False)
    while len(cluster.nodes) < 2:
        cluster.nodes.append(cluster.add_node(num_cpus=1, resources={"render": 1}))
    cluster.wait_for_nodes()
    bad = cluster.nodes[0].node_id

    @ray.remote
    class Gate:
        """Opens once the bad node has failed MAX_START_FAILURES_PER_NODE starts: the good node's first
        scene waits for it, so the pool meets every failure before the job could end."""

        def __init__(self):
            import asyncio

            self.failures, self.opened = 0, asyncio.Event()

        async def failed(self) -> None:
            self.failures += 1
            if self.failures >= MAX_START_FAILURES_PER_NODE:
                self.opened.set()

        async def wait(self) -> None:
            await self.opened.wait()

    class StartsOffOneNode:  # defined here: Ray ships it to the workers by value
        def __init__(self, bad_node: str, gate):
            self.bad_node, self.gate = bad_node, gate

        def where(self):
            return os.getpid(), ray.get_runtime_context().get_node_id()

        def start(self):
            node = ray.get_runtime_context().get_node_id()
            if node == self.bad_node:
                ray.get(self.gate.failed.remote())
                raise WorkerStartError(node, "UserError: --device: gpu: Cycles found no GPU")
            return os.getpid(), node

        def render(self, index: int) -> dict:
            ray.get(self.gate.wait.remote())
            return {"index": index, "node": ray.get_runtime_context().get_node_id()}

    ray.init(address=cluster.address)
    try:
        lines: list[str] = []
        options = dict(num_cpus=1, resources={"render": 1}, max_restarts=0)
        pool = RenderPool(
            ray.remote(StartsOffOneNode), options, (bad, Gate.options(num_cpus=0).remote()), 2, retries=0,
            placement_timeout=300, needs="1 CPU and 1 'render'",
            progress=Progress(12, 0, 1, 0, lines.append, 60.0, 2), log=lines.append,
        )  # fmt: skip
        results = list(pool.render(list(range(12))))
        pool.close()
    finally:
        ray.shutdown()
    assert sorted(r["index"] for r in results) == list(range(12))
    assert {r["node"] for r in results} == {cluster.nodes[1].node_id}  # none on the skipped node
    skipped = [ln for ln in lines if "skipped" in ln]
    assert len(skipped) == 1 and bad[:12] in skipped[0] and "Cycles found no GPU" in skipped[0], lines
    assert pool.stats.worker_start_failures == MAX_START_FAILURES_PER_NODE  # none after the skip


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: its workers would start")
def test_gpu_workers_on_a_node_without_a_usable_gpu_stop_the_job_naming_the_resource(cluster, tmp_path):
    """`--device gpu` on a cluster whose only GPU node declares a GPU Cycles cannot use: the real render
    workers fail to start there, the node is skipped after the cap, and the job stops with one error that
    names the resource and the skipped node (not an endless stream of replacements)."""
    node = cluster.add_node(num_cpus=1, num_gpus=1, resources={"render_gpu": 1})
    cluster.wait_for_nodes()
    gpu_config = make_config(
        2, seed=11, resolution=32, samples=2, device="gpu", splits={"train": 1.0}, shard_size=2,
        sampler_overrides={"max_objects": 2, "min_objects": 1},
    )  # fmt: skip
    lines: list[str] = []
    try:
        with pytest.raises(GenerationError) as failed:
            run_generation(
                tmp_path, gpu_config, address=cluster.address, worker_resource="render_gpu",
                log=lines.append, progress_interval=1.0, placement_timeout=BOUND,
            )  # fmt: skip
    finally:
        cluster.remove_node(node, allow_graceful=False)
    message = str(failed.value)
    assert "no live node offers 1 CPU and 1 GPU and 1 'render_gpu'" in message, message
    assert f"node(s) {node.node_id[:12]} skipped after workers failed to start there" in message, message
    assert "Cycles found no GPU" in message, message
    assert sum("skipped" in ln for ln in lines) == 1, lines
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["runs"][0]["worker_start_failures"] == 3 and manifest["shards"] == []


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

    with pytest.raises(
        GenerationError, match="no worker could be placed for 2 s: no live node offers .*'gpu_r'"
    ):
        run_generation(tmp_path / "out", config(2), worker_resource="gpu_r", placement_timeout=2, log=print)


def test_the_cli_words_a_failed_job_as_one_line_and_exits_1(local_ray, tmp_path, capsys) -> None:
    from app.cli import main

    argv = ["synth", "run", "--out", str(tmp_path / "out"), "--scenes", "2", "--resolution", "32"]
    argv += ["--samples", "2", "--worker-resource", "gpu_r", "--placement-timeout", "2"]
    assert main(argv) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("cobl:")]
    assert len(errors) == 1 and "no worker could be placed" in errors[0] and "'gpu_r'" in errors[0], errors
