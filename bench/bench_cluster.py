"""Node loss on a three-node harness cluster: a head and two render nodes on this machine, one render node
killed mid-job. Prints the figures docs/cluster.md quotes (time to finish after the kill, byte-identity
with a local run of the same command).

    PYOPENGL_PLATFORM=egl .venv/bin/python bench/bench_cluster.py [--scenes 60] [--kill-at 12]

Token authentication is on throughout: the script writes a fresh token to a temporary file and points
``RAY_AUTH_TOKEN_PATH`` at it for the harness and for the ``cobl synth run`` subprocesses it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def token_env(tmp: Path) -> dict[str, str]:
    """RAY_AUTH_MODE=token with a new token in ``tmp``; the environment is also set for this process."""
    path = tmp / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    os.environ.update(env)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    return env


def start_cluster(render_nodes: int = 2):
    """Head with no CPUs of its own (it runs the driver) plus ``render_nodes`` nodes of 1 CPU + 1 render."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1, resources={"render": 1}) for _ in range(render_nodes)]
    cluster.wait_for_nodes()
    return cluster, nodes


def synth_cmd(out: Path, scenes: int, resolution: int, samples: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app.cli",
        "synth",
        "run",
        "--out",
        str(out),
        "--scenes",
        str(scenes),
        "--resolution",
        str(resolution),
        "--samples",
        str(samples),
        "--seed",
        "3",
        "--shard-size",
        "10",
        "--workers",
        "2",
        "--progress-every",
        "2",
        *extra,
    ]


def shard_hashes(out: Path) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--kill-at", type=float, default=12.0, help="seconds into the job the render node dies")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYOPENGL_PLATFORM="egl", **token_env(tmp))

    t = time.monotonic()
    local = subprocess.run(
        synth_cmd(tmp / "local", args.scenes, args.resolution, args.samples),
        env=env,
        capture_output=True,
        text=True,
    )
    local_s = time.monotonic() - t
    assert local.returncode == 0, local.stderr[-3000:]

    cluster, nodes = start_cluster()
    try:
        log = open(tmp / "cluster.log", "w")
        t = time.monotonic()
        proc = subprocess.Popen(
            synth_cmd(
                tmp / "cluster",
                args.scenes,
                args.resolution,
                args.samples,
                "--address",
                cluster.address,
                "--worker-resource",
                "render",
            ),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(args.kill_at)
        cluster.remove_node(nodes[1], allow_graceful=False)
        t_kill = time.monotonic()
        rc = proc.wait(timeout=600)
        t_end = time.monotonic()
        log.close()
    finally:
        cluster.shutdown()
    text = (tmp / "cluster.log").read_text()
    identical = rc == 0 and shard_hashes(tmp / "local") == shard_hashes(tmp / "cluster")
    figures = {
        "scenes": args.scenes,
        "resolution": args.resolution,
        "samples": args.samples,
        "local_run_s": round(local_s, 1),
        "kill_at_s": args.kill_at,
        "cluster_run_s": round(t_end - t, 1),
        "after_kill_s": round(t_end - t_kill, 1),
        "exit_code": rc,
        "byte_identical": identical,
        "lost_lines": [ln for ln in text.splitlines() if " lost" in ln],
    }
    print(json.dumps(figures, indent=1))
    print(text[-2500:], file=sys.stderr)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
