"""Ray from a plain shell (issue 20, first hour and item 7): ``cobl synth run`` works without the Makefile's
environment (``RAY_AUTH_MODE`` unset), and the Ray processes a killed local run leaves behind are ended by
the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core import ray_local

ROOT = Path(__file__).resolve().parents[1]
COBL = Path(sys.executable).parent / "cobl"


def plain_env() -> dict[str, str]:
    """A shell's environment without what the Makefile exports for `make test` and `make demo`."""
    drop = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "PYOPENGL_PLATFORM", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_synth_run_works_in_a_plain_shell(tmp_path):
    """The README's `cobl synth run`, as a user types it: the installed `cobl` script, no Makefile."""
    argv = [str(COBL), "synth", "run", "--out", str(tmp_path / "data"), "--scenes", "1", "--resolution", "32",
            "--samples", "1", "--workers", "1", "--split", "train=1"]  # fmt: skip
    proc = subprocess.run(argv, env=plain_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AuthenticationError" not in proc.stderr
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["complete"] and [s["name"] for s in manifest["shards"]] == ["train-000000.tar"]


START_AND_WAIT = """
import time
from core.ray_local import connect
connect(1, None)
print("UP", flush=True)
time.sleep(600)
"""


def test_a_killed_runs_ray_processes_are_ended_by_the_next_run(tmp_path):
    env = {**plain_env(), "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [sys.executable, "-c", START_AND_WAIT], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "UP"
        record = json.loads((ray_local.record_dir() / f"{driver.pid}.json").read_text())
        raylets = [e["pid"] for e in record["processes"]]
        session = ray_local._session_processes(record)
        assert raylets and len(session) > len(raylets)  # the agents Ray's raylet started, too
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    pids = [p.pid for p in session]
    time.sleep(2)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    if not left:
        pytest.skip("this Ray version ended its own processes with the driver: nothing was orphaned")
    lines = []
    assert ray_local.end_orphans(log=lines.append) >= len(left)
    assert lines and f"pid {driver.pid}" in lines[0]
    gone = [p for p in left if not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE]
    assert gone == left
    assert not (ray_local.record_dir() / f"{driver.pid}.json").exists()
