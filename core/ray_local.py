"""Starting or joining Ray so that it works from a plain shell and leaves nothing behind.

- **Token authentication.** Ray reads ``RAY_AUTH_MODE`` into its cached config when it is imported. Setting
  it afterwards gives a driver that believes authentication is off next to a GCS that requires a token, and
  the job dies with ``AuthenticationError``. ``prepare_env`` sets it (default ``token``) before Ray is
  imported, and refreshes Ray's config when Ray was already imported.
- **Joining a cluster.** ``--address host:port`` is tried with a TCP connection first, bounded by
  ``RAY_CONNECT_TIMEOUT_S``: nothing listening is a one-line error instead of a wait without end.
- **Orphans.** A local instance's processes (GCS, raylet, agents, workers) outlive a driver that was
  SIGKILLed, and some ignore SIGTERM. Each local start records its processes in a small file
  (``record_dir()``); the next local start ends those of any recorded driver that is no longer alive, and
  says so. Only processes recorded by such a start (pid and start time both matching) are ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.errors import UserError
from core.policy import RAY_CONNECT_TIMEOUT_S

AUTH_ENV = "RAY_AUTH_MODE"


def prepare_env() -> None:
    """Token authentication on unless the caller chose otherwise, seen by Ray whether imported yet or not."""
    if AUTH_ENV in os.environ:
        return
    os.environ[AUTH_ENV] = "token"
    if "ray" in sys.modules:  # Ray cached the unset mode at import: refresh it as Ray itself does
        from ray._raylet import Config

        Config.initialize("")


def record_dir() -> Path:
    """Where local starts record their processes (per user; the system's temporary folder)."""
    return Path(tempfile.gettempdir()) / f"cobl-ray-{os.getuid()}"


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(entry: dict) -> bool:
    start = _start_time(int(entry["pid"]))
    return start is not None and abs(start - float(entry["start"])) < 1e-3


def record_session() -> Path:
    """Write this driver's local Ray processes (called right after a local ``ray.init``)."""
    import psutil
    import ray

    node = ray._private.worker._global_node
    pids = {info.process.pid for infos in node.all_processes.values() for info in infos if info.process}
    entries = []
    for pid in sorted(pids):
        start = _start_time(pid)
        if start is not None:
            entries.append({"pid": pid, "start": start})
    me = psutil.Process()
    record = {
        "driver": {"pid": me.pid, "start": me.create_time()},
        "session_dir": node.get_session_dir_path(),
        "processes": entries,
    }
    folder = record_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{me.pid}.json"
    path.write_text(json.dumps(record))
    return path


def end_orphans(log: Callable[[str], None] | None = None, grace_s: float = 3.0) -> int:
    """End the recorded local Ray processes of every driver that is gone; returns how many were ended."""
    import psutil

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    folder = record_dir()
    ended = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            driver = record["driver"]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a record cut short by the kill itself: nothing to go on
            continue
        if _alive(driver):
            continue  # a live run's instance (this machine may run several): not ours to end
        procs = _session_processes(record)
        if procs:
            for proc in procs:
                _signal(proc, signal.SIGTERM)
            _, alive = psutil.wait_procs(procs, timeout=grace_s)
            for proc in alive:  # Ray's agents ignore SIGTERM
                _signal(proc, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=grace_s)
            ended += len(procs)
            log(
                f"cobl: ended {len(procs)} Ray process(es) left behind by an earlier local run (its driver, "
                f"pid {driver['pid']}, is gone)"
            )
        path.unlink(missing_ok=True)
    return ended


def _session_processes(record: dict) -> list:
    """The live processes of a recorded instance: those recorded, their children, and the processes its
    raylets started that outlived them (agents and workers carry ``RAY_RAYLET_PID`` in their environment and
    keep files of the session folder open)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    recorded = [e for e in record.get("processes", []) if _alive(e)]
    for entry in recorded:
        proc = psutil.Process(int(entry["pid"]))
        found[proc.pid] = proc
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    # a recorded pid now held by another process (reused) names someone else's raylet: leave its children
    raylets = {str(e["pid"]) for e in record.get("processes", []) if _start_time(int(e["pid"])) is None}
    raylets |= {str(e["pid"]) for e in recorded}
    since = float(record["driver"]["start"])
    for proc in psutil.process_iter(["pid", "create_time"]):
        if proc.pid in found or (proc.info["create_time"] or 0) < since:
            continue
        if _raylet_pid(proc.pid) in raylets or _uses_session(proc.pid, record.get("session_dir")):
            found[proc.pid] = proc
    found.pop(os.getpid(), None)
    return list(found.values())


def _raylet_pid(pid: int) -> str | None:
    """``RAY_RAYLET_PID`` from a process's environment, read from /proc directly: Ray retitles its agents
    (setproctitle), which leaves NUL bytes in front of the block that psutil's parser stops at."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(b"RAY_RAYLET_PID="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def _uses_session(pid: int, session_dir: str | None) -> bool:
    """True when a process holds a file of the recorded session open (Ray's agents keep their logs in the
    session folder open; their retitling may have overwritten the environment block)."""
    if not session_dir:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session_dir + os.sep):
                return True
        except OSError:
            continue
    return False


def _signal(proc, sig: int) -> None:
    import psutil

    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def forget_session() -> None:
    """Drop this driver's record after a clean shutdown."""
    (record_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)


def check_reachable(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """One-line error unless something accepts a TCP connection at ``address`` (``host:port`` or
    ``ray://host:port``) within ``timeout`` seconds; ``auto`` is left to Ray (it reads the local record)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"{address!r}: expected auto, HOST:PORT or ray://HOST:PORT", option="address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise UserError(
            f"{address}: no Ray cluster answers there ({reason} after at most {timeout:.0f} s)",
            option="address",
        ) from None


def connect(num_cpus: int, address: str | None, log_to_driver: bool = True) -> bool:
    """Join ``address``, reuse an already initialised Ray, or start a private local instance (after ending
    the orphans of killed earlier runs). Returns True when this call connected, so the caller calls
    ``disconnect`` again."""
    prepare_env()
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=log_to_driver)
        except ConnectionError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"{address}: cannot join the Ray cluster ({first[:200]})", option="address"
            ) from None
        return True
    end_orphans()
    # address="local" always starts a fresh instance, never attaching to someone else's cluster.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
    record_session()
    return True


def disconnect() -> None:
    """``ray.shutdown()`` and drop the orphan record of this driver."""
    import ray

    ray.shutdown()
    forget_session()
