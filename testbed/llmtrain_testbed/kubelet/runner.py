"""Container processes: start one in the pod's namespaces through launcher.py, watch it, stop its whole tree.

A container is the launcher's process after `exec`: it leads its own session (so SIGTERM reaches the process group,
e.g. torchrun and its workers), writes stdout+stderr straight to its log file (so logs survive the kubelet), and
records its mount namespace, which identifies every process it forked even if one calls setsid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import REPO_ROOT

LAUNCHER = Path(__file__).with_name("launcher.py")

log = logging.getLogger("testbed.kubelet.runner")


@dataclass
class Mount:
    """One bind mount into the container: a host path shown at `target`."""

    source: str
    target: str
    read_only: bool = False


@dataclass
class LaunchSpec:
    """Everything the launcher needs to become the container; written as JSON next to the log."""

    argv: list[str]
    env: dict[str, str]
    hostname: str
    netns_path: str
    mounts: list[Mount] = field(default_factory=list)
    working_dir: str | None = None


def _spec_json(spec: LaunchSpec, run_dir: Path) -> dict:
    return {
        "argv": spec.argv,
        "env": spec.env,
        "hostname": spec.hostname,
        "netns_path": spec.netns_path,
        "working_dir": spec.working_dir,
        "mounts": [m.__dict__ for m in spec.mounts],
        "scratch_dir": str(run_dir / "scratch"),
        "mnt_ns_file": str(run_dir / "mnt-ns"),
        "host_created_file": str(run_dir.parent / "host-created"),
        "image_paths": image_paths(),
    }


def image_paths() -> list[str]:
    """What a container image would hold: the repo (our packages), the venv and the interpreter it links to.

    A pod volume mounted over one of their parents (an emptyDir at /tmp while the repo is cloned under /tmp, say)
    must not hide them, so the launcher binds them back on top of the pod's mounts.
    """
    paths = {str(REPO_ROOT), sys.prefix, sys.base_prefix}
    return sorted(p for p in paths if p != "/")


class ContainerProcess:
    """A running (or finished) container process."""

    def __init__(self, spec: LaunchSpec, run_dir: Path, log_path: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.log_path = log_path
        spec_path = run_dir / "launch.json"
        spec_path.write_text(json.dumps(_spec_json(spec, run_dir)))
        (run_dir / "mnt-ns").unlink(missing_ok=True)
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                env={},
            )
        self.pid = self.proc.pid
        self._ns_fd: int | None = None  # holds the container's mount namespace (so its id cannot be reused)
        self._ns_id: tuple[int, int] | None = None
        deadline = time.monotonic() + 2  # the launcher unshares within milliseconds
        while self._ns_fd is None and self.proc.poll() is None and time.monotonic() < deadline:
            self._capture_ns()
            time.sleep(0.005)

    def _capture_ns(self) -> None:
        """Once the launcher unshared, hold the namespace open: its id then identifies this container's processes
        until we let go (a freed namespace's inode number is reused by the next container's)."""
        if self._ns_fd is not None or self.proc.returncode is not None:
            return
        try:
            recorded = (self.run_dir / "mnt-ns").read_text().strip()
            fd = os.open(f"/proc/{self.pid}/ns/mnt", os.O_RDONLY)
        except OSError:
            return
        if recorded and os.readlink(f"/proc/{self.pid}/ns/mnt") == recorded:
            st = os.fstat(fd)
            self._ns_fd, self._ns_id = fd, (st.st_dev, st.st_ino)
        else:
            os.close(fd)

    def poll(self) -> int | None:
        """The exit code once the main process ended (negative signal numbers become 128+n, like a runtime)."""
        self._capture_ns()
        code = self.proc.poll()
        if code is not None and code < 0:
            return 128 - code
        return code

    def _tree(self) -> list[int]:
        """Processes of this container: those in its (held) mount namespace, plus its process group while the
        main process is not reaped (before that the group id cannot belong to anyone else)."""
        pids: set[int] = set()
        group_valid = self.proc.returncode is None
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if self._ns_id is not None:
                    st = os.stat(f"/proc/{pid}/ns/mnt")
                    if (st.st_dev, st.st_ino) == self._ns_id:
                        pids.add(pid)
                        continue
                if group_valid and os.getpgid(pid) == self.pid:
                    pids.add(pid)
            except (OSError, ProcessLookupError):
                continue
        pids.discard(os.getpid())
        return sorted(pids)

    def signal_group(self, sig: int) -> None:
        if self.proc.returncode is not None:
            return  # reaped: the group id may belong to someone else by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM the process group, wait up to `grace_s` for the main process, then SIGKILL the whole tree."""
        self._capture_ns()
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + max(grace_s, 0)
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill_tree()
        return self.poll()

    def kill_tree(self) -> None:
        """SIGKILL every process of the container (also children that outlived the main process), reap, and
        release the namespace."""
        self._capture_ns()
        for _ in range(100):
            self.signal_group(signal.SIGKILL)
            pids = self._tree()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("container process %d did not die after SIGKILL", self.pid)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
        self._ns_fd = self._ns_id = None


def exec_in_container(
    pid: int, argv: list[str], env: dict[str, str], run_dir: Path, timeout_s: float
) -> tuple[int, str]:
    """Run argv inside a running container's network, UTS and mount namespaces (exec probes); returns (code, output)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / f"exec-{uuid.uuid4().hex[:8]}.json"
    spec_path.write_text(json.dumps({"join_pid": pid, "argv": argv, "env": env}))
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", str(LAUNCHER), str(spec_path)],
            capture_output=True,
            timeout=timeout_s,
            env={},
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        return -1, f"timed out after {timeout_s}s: {exc}"
    finally:
        spec_path.unlink(missing_ok=True)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")[-1024:]
