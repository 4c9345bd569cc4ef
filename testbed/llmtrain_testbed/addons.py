"""What the test bed's add-on managers (Kueue, Kubeflow's training-operator) share: starting one as a host process
and waiting for its /readyz, and the `up|down` command line each module exposes."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import cluster, paths, probes, processes


@dataclass(frozen=True)
class Manager:
    """An add-on's manager process: its name (pid file, log), the ports it binds, where it answers /readyz."""

    name: str
    ports: tuple[int, ...]
    health_port: int
    env: dict[str, str] = field(default_factory=dict)


def ensure_manager(manager: Manager, state: Path, argv: list[str], deadline: float) -> None:
    """(Re)start the manager unless it already runs with this argv, then wait until it is ready or has died."""
    tracked = processes.read(state, manager.name)
    if tracked is None or not tracked.alive() or tracked.argv != argv:
        if tracked is not None and tracked.alive():
            processes.stop(state, manager.name)
        for port in manager.ports:
            processes.ensure_port_free(port, manager.name, "127.0.0.1")
        logging.getLogger("testbed").info("starting %s manager", manager.name)
        processes.start(state, manager.name, argv, env=manager.env or None)
    log_file = state / "logs" / f"{manager.name}.log"
    while probes.get(f"http://127.0.0.1:{manager.health_port}/readyz") != (200, "ok"):
        tracked = processes.read(state, manager.name)
        died = tracked is None or not tracked.alive()
        if died or time.monotonic() > deadline:
            what = "exited during start-up" if died else "not ready in time"
            raise cluster.TestbedError(f"{manager.name} {what}; see {log_file}:\n{probes.log_tail(log_file)}")
        time.sleep(0.5)


def main(prog: str, description: str, up: Callable[[], None], down: Callable[[], None], argv: list[str] | None) -> int:
    """`python -m <prog> up|down`: errors are one line on stderr and exit 1, not a traceback."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[testbed] %(message)s", stream=sys.stderr)
    try:
        up() if args.command == "up" else down()
    except (cluster.TestbedError, paths.MissingBinary, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or ""
        print(f"error: {error} {detail}".strip(), file=sys.stderr)
        return 1
    return 0
