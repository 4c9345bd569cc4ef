"""Detached component processes tracked by pid files, so a later `down` (another Python process) can stop them.

Each component runs in its own session (process group) with its log in the state dir. A pid file also keeps
the process's start time, so a recycled pid is never mistaken for our component. Every process we start
carries MARKER_ENV=<state dir> in its environment; `sweep` uses it to find anything left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MARKER_ENV = "LLMTRAIN_TESTBED_STATE"


class PortBusy(RuntimeError):
    """A port the test bed needs is taken by something it did not start."""


@dataclass(frozen=True)
class Tracked:
    """A component process as recorded in its pid file."""

    name: str
    pid: int
    start_time: str
    argv: list[str]

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: the start time in clock ticks, unique per pid incarnation."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait() is missing
        return None
    return fields[19]


def pid_file(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.json"


def read(state: Path, name: str) -> Tracked | None:
    try:
        data = json.loads(pid_file(state, name).read_text())
    except (OSError, ValueError):
        return None
    return Tracked(name, int(data["pid"]), str(data["startTime"]), list(data["argv"]))


def start(state: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> Tracked:
    """Start `argv` detached (own session, stdin closed), logging to <state>/logs/<name>.log."""
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "pids").mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {}), MARKER_ENV: str(state)}
    with open(state / "logs" / f"{name}.log", "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    tracked = Tracked(name, proc.pid, _start_time(proc.pid) or "", argv)
    pid_file(state, name).write_text(json.dumps({"pid": proc.pid, "startTime": tracked.start_time, "argv": argv}))
    return tracked


def stop(state: Path, name: str, grace: float = 10.0) -> bool:
    """SIGTERM the component's whole process group, SIGKILL what is left after `grace` s. True if it was running."""
    tracked = read(state, name)
    pid_file(state, name).unlink(missing_ok=True)
    if tracked is None or not tracked.alive():
        return False
    _signal_group(tracked.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (tracked.alive() or _group_exists(tracked.pid)):
        time.sleep(0.1)
    _signal_group(tracked.pid, signal.SIGKILL)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _any_live_member(pgid)


def _any_live_member(pgid: int) -> bool:
    """killpg(0) also succeeds for zombies; look for a member that is not one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def marked(state: Path) -> list[int]:
    """Pids of live processes started by this test bed (directly or as descendants), except our own lineage."""
    needle = f"{MARKER_ENV}={state}".encode()
    own = _ancestors(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _start_time(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def sweep(state: Path) -> list[int]:
    """SIGKILL every marked process that survived an orderly stop; returns their pids."""
    leftovers = marked(state)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


def _ancestors(pid: int) -> set[int]:
    chain = set()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return chain


def ensure_port_free(port: int, component: str, host: str = "0.0.0.0") -> None:
    """Raise PortBusy with what to do if something already listens on `port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise PortBusy(
                f"port {port} (for {component}) is already in use by another process: "
                f"find it with `ss -ltnp 'sport = :{port}'` and stop it, or run `make cluster-down`"
            ) from None
