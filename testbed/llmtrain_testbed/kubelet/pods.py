"""One worker thread per pod: sandbox, init containers, containers, probes, restarts, status, deletion.

The worker is level-triggered: every tick (or when the watch says the pod changed) it compares what should run
with what runs, and writes the status it computes whenever that differs from what it wrote last.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import network
from . import dns
from .api import ApiError
from .env import EnvError, PodFacts, container_argv, resolve_env
from .probes import ProbeTarget, ProbeTracker, new_tracker, probe_once
from .recovery import LOST_REASON, recover_container
from .runner import ContainerProcess, LaunchSpec, Mount
from .status import ContainerState, Terminated, pod_phase, pod_status, terminated_reason
from .volumes import VolumeBuilder, VolumeError, unmount_under

if TYPE_CHECKING:
    from .agent import Kubelet

log = logging.getLogger("testbed.kubelet.pods")

TICK_S = 0.25
MAX_BACKOFF_S = 10.0
BACKOFF_RESET_S = 60.0
MAX_TERMINATION_MESSAGE = 4096


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backoff_delay(restarts: int) -> float:
    """1 s, 2 s, 4 s, 8 s, then 10 s: the kubelet's crash-loop back-off, capped short for a test bed."""
    return min(MAX_BACKOFF_S, 2.0 ** max(restarts, 0))


class Container:
    """A container of this pod: its spec, its state, its current process and probes."""

    def __init__(self, spec: dict, init: bool) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.state = ContainerState(name=self.name, image=spec.get("image", ""))
        self.proc: ContainerProcess | None = None
        self.env: dict[str, str] = {}
        self.next_start = 0.0
        self.pending_restart = False  # the next start is a restart (restartCount + 1)
        self.started_mono = 0.0
        self.startup: ProbeTracker | None = None
        self.liveness: ProbeTracker | None = None
        self.readiness: ProbeTracker | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.state.running_since is not None

    def dir(self, pod_dir: Path) -> Path:
        return pod_dir / self.name


class PodWorker:
    """Runs one pod bound to one of our nodes, in its own thread, until it is deleted (or the kubelet stops)."""

    def __init__(self, kubelet: Kubelet, pod: dict) -> None:
        meta = pod["metadata"]
        self.thread = threading.Thread(target=self.run, name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kl = kubelet
        self.pod = pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.node = pod["spec"]["nodeName"]
        self.ctx = f"node={self.node} pod={self.ns}/{self.pod_name}"
        self.pod_dir = kubelet.state_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.wake = threading.Event()
        self.gone = False
        self.finished = threading.Event()
        self.finished_at = 0.0
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.ip: str | None = None
        self.netns: str | None = None
        self.volumes: dict[str, Path] | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or now_iso()
        self.prev_conditions: list[dict] = (pod.get("status") or {}).get("conditions") or []
        self.last_sent: dict | None = None
        self.sandbox_error = ""
        self.next_sandbox_try = 0.0
        self.terminal_cleaned = False
        self.frozen = False  # a pod found terminal at start: its status is history, never rewritten

    # ----- inputs from the kubelet -----

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        self.gone = True
        self.wake.set()

    # ----- main loop -----

    def run(self) -> None:
        log.info("%s: worker started", self.ctx)
        try:
            self._recover_previous_run()
            while True:
                if self.kl.stopping.is_set():
                    self._stop_everything(min(self.kl.shutdown_grace_s, self._grace()))
                    return
                if self.gone:
                    log.info("%s: pod vanished from the API; killing its processes", self.ctx)
                    self._stop_everything(0)
                    self._remove_pod_files()
                    return
                if self.pod["metadata"].get("deletionTimestamp"):
                    self._finalize_deletion()
                    return
                try:
                    self._step()
                    self._sync_status()
                except Exception:
                    log.exception("%s: sync failed; retrying", self.ctx)
                    self.wake.wait(1)
                self.wake.wait(TICK_S)
                self.wake.clear()
        except Exception:
            log.exception("%s: worker crashed; killing the pod's processes", self.ctx)
            self._stop_everything(0)
        finally:
            self.finished_at = time.monotonic()
            self.finished.set()

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def phase(self) -> str:
        return pod_phase(
            self.restart_policy, [c.state for c in self.init_containers], [c.state for c in self.containers]
        )

    # ----- recovery after a kubelet restart -----

    def _recover_previous_run(self) -> None:
        """Adopt what a previous kubelet run reported (see recovery.py); terminal pods are left as they are."""
        status = self.pod.get("status") or {}
        self.ip = status.get("podIP")  # reported until a new sandbox gets a new address
        if status.get("phase") in ("Succeeded", "Failed"):
            self.frozen = True
            self.terminal_cleaned = True
            return
        previous = {
            s["name"]: s for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        }
        now = now_iso()
        for c in [*self.init_containers, *self.containers]:
            prev = previous.get(c.name)
            if not prev:
                continue
            image = c.state.image
            c.state, c.pending_restart = recover_container(
                c.name, prev, init=c.init, restart_policy=self.restart_policy, now=now
            )
            c.state.image = image
            if any(t is not None and t.reason == LOST_REASON for t in (c.state.last_terminated, c.state.terminated)):
                log.warning("%s container=%s: started by a previous kubelet run; its process is lost", self.ctx, c.name)

    # ----- one reconcile step -----

    def _step(self) -> None:
        if self.frozen:
            return
        if self.phase() in ("Succeeded", "Failed"):
            if not self.terminal_cleaned:
                log.info("%s: pod is %s; tearing down its sandbox", self.ctx, self.phase())
                self._stop_processes(0)
                self._teardown_sandbox(keep_ip=True)
                self.terminal_cleaned = True
            return
        if not self._ensure_sandbox():
            return
        pending_init = next((c for c in self.init_containers if not c.state.succeeded), None)
        if pending_init is not None:
            self._drive(pending_init)
            for c in self.containers:
                c.state.waiting_reason = "PodInitializing"
            return
        for c in self.containers:
            self._drive(c)

    def _ensure_sandbox(self) -> bool:
        if self.netns and self.volumes is not None:
            return True
        if time.monotonic() < self.next_sandbox_try:
            return False
        try:
            if not self.netns:
                self.pod_dir.mkdir(parents=True, exist_ok=True)
                self.ip = self.kl.ipam.allocate(self.uid)
                self.netns = network.create_pod_netns(self.uid, self.ip)
                self._write_dns_files()
                (self.pod_dir / "tmp").mkdir(exist_ok=True)
                os.chmod(self.pod_dir / "tmp", 0o1777)
                log.info("%s: sandbox ready with IP %s", self.ctx, self.ip)
            builder = VolumeBuilder(
                self.kl.api,
                self.pod,
                self.pod_dir,
                self.kl.state_dir,
                self._facts(),
                self.kl.lookup("configmaps", self.ns),
                self.kl.lookup("secrets", self.ns),
            )
            self.volumes = builder.build()
            self.sandbox_error = ""
            return True
        except (VolumeError, network.NetworkError, ApiError, OSError) as exc:
            self.sandbox_error = str(exc)
            log.warning("%s: cannot set up the pod yet: %s", self.ctx, exc)
            for c in [*self.init_containers, *self.containers]:
                c.state.waiting_reason, c.state.waiting_message = "ContainerCreating", str(exc)[:512]
            self.next_sandbox_try = time.monotonic() + 2
            return False

    def _facts(self) -> PodFacts:
        return PodFacts(pod_ip=self.ip or "", host_ip=self.kl.host_ip, node_allocatable=self.kl.allocatable)

    def _write_dns_files(self) -> None:
        self.refresh_hosts()
        dns.write_in_place(self.pod_dir / "resolv.conf", dns.render_resolv_conf(self.ns, self.kl.host_ip))
        dns.write_in_place(self.pod_dir / "hostname", dns.pod_hostname(self.pod) + "\n")

    def refresh_hosts(self) -> None:
        """Rewrite this pod's hosts file in place if the cluster's pods/services changed it (DNS loop calls this)."""
        if self.ip and self.netns:
            dns.write_in_place(self.pod_dir / "hosts", self.kl.render_hosts(self.pod, self.ip))

    # ----- containers -----

    def _drive(self, c: Container) -> None:
        now = time.monotonic()
        if c.proc is not None:
            code = c.proc.poll()
            if code is None:
                self._probe(c, now)
                return
            self._on_exit(c, code)
        if c.state.terminated is not None:
            return  # finished for good (not restarted per restartPolicy)
        if now >= c.next_start:
            self._start(c)

    def _start(self, c: Container) -> None:
        try:
            c.env = resolve_env(
                c.spec,
                self.pod,
                self.kl.base_env(self.pod),
                self._facts(),
                self.kl.lookup("configmaps", self.ns),
                self.kl.lookup("secrets", self.ns),
            )
            argv = container_argv(c.spec, c.env)
            mounts = self._mounts(c)
        except (EnvError, VolumeError, ValueError) as exc:
            c.state.waiting_reason, c.state.waiting_message = "CreateContainerConfigError", str(exc)[:512]
            c.next_start = time.monotonic() + 2
            log.warning("%s container=%s: %s", self.ctx, c.name, exc)
            return
        if c.pending_restart:
            c.state.restart_count += 1
            c.pending_restart = False
        cdir = c.dir(self.pod_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "termination-log").write_bytes(b"")
        spec = LaunchSpec(
            argv=argv,
            env=c.env,
            hostname=dns.pod_hostname(self.pod),
            netns_path=str(network.NETNS_DIR / self.netns),
            mounts=mounts,
            working_dir=c.spec.get("workingDir"),
        )
        run_dir = cdir / f"run-{c.state.restart_count}"
        shutil.rmtree(run_dir, ignore_errors=True)
        c.proc = ContainerProcess(spec, run_dir, cdir / f"{c.state.restart_count}.log")
        c.started_mono = time.monotonic()
        c.state.running_since = now_iso()
        c.state.terminated = None
        c.state.waiting_reason, c.state.waiting_message = "", ""
        c.state.container_id = f"process://{c.proc.pid}"
        c.startup = new_tracker(c.spec.get("startupProbe"), None)
        c.liveness = new_tracker(c.spec.get("livenessProbe"), True)
        c.readiness = new_tracker(c.spec.get("readinessProbe"), False)
        c.state.started = c.startup is None
        c.state.ready = not c.init and c.readiness is None and c.state.started
        log.info(
            "%s container=%s: started pid %d (restart %d): %s",
            self.ctx,
            c.name,
            c.proc.pid,
            c.state.restart_count,
            " ".join(argv)[:200],
        )

    def _mounts(self, c: Container) -> list[Mount]:
        cdir = c.dir(self.pod_dir)
        mounts = [
            Mount(str(self.pod_dir / "hosts"), "/etc/hosts"),
            Mount(str(self.pod_dir / "resolv.conf"), "/etc/resolv.conf"),
            Mount(str(self.pod_dir / "hostname"), "/etc/hostname"),
            Mount(str(self.pod_dir / "tmp"), "/tmp"),
            Mount(str(cdir / "termination-log"), c.spec.get("terminationMessagePath") or "/dev/termination-log"),
        ]
        for vm in c.spec.get("volumeMounts") or []:
            if vm["name"] not in (self.volumes or {}):
                raise VolumeError(f"volumeMount {vm['mountPath']}: no volume named {vm['name']!r}")
            source = self.volumes[vm["name"]]
            if vm.get("subPath"):
                source = source / vm["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(Mount(str(source), vm["mountPath"], bool(vm.get("readOnly"))))
        return sorted(mounts, key=lambda m: m.target.rstrip("/").count("/"))

    def _on_exit(self, c: Container, code: int) -> None:
        assert c.proc is not None
        c.proc.kill_tree()
        started = c.state.running_since or now_iso()
        message = self._termination_message(c, code)
        reason = terminated_reason(code)
        if code == 128 and message.startswith("launcher:"):
            reason = "StartError"
        term = Terminated(code, reason, started, now_iso(), message)
        log.info("%s container=%s: exited with %d (%s)", self.ctx, c.name, code, reason)
        c.proc = None
        c.state.running_since = None
        c.state.ready = False
        c.state.started = False
        restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if c.init:
            restart = code != 0 and self.restart_policy != "Never"
        if not restart:
            c.state.terminated = term
            c.state.ready = c.init and code == 0
            return
        ran_s = time.monotonic() - c.started_mono
        delay = 1.0 if ran_s >= BACKOFF_RESET_S else backoff_delay(c.state.restart_count)
        c.state.last_terminated = term
        c.state.terminated = None
        c.state.waiting_reason = "CrashLoopBackOff"
        c.pending_restart = True
        c.state.waiting_message = f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.pod_name}"
        c.next_start = time.monotonic() + delay

    def _termination_message(self, c: Container, code: int) -> str:
        cdir = c.dir(self.pod_dir)
        try:
            message = (cdir / "termination-log").read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        except OSError:
            message = ""
        policy = c.spec.get("terminationMessagePolicy", "File")
        fallback = not message and code != 0 and policy == "FallbackToLogsOnError"
        if fallback or (code == 128 and not message):
            try:
                tail = (cdir / f"{c.state.restart_count}.log").read_bytes()[-2048:].decode(errors="replace")
            except OSError:
                tail = ""
            lines = tail.splitlines()[-80:]
            launcher = next((ln for ln in lines if ln.startswith("launcher:")), "")
            message = launcher if code == 128 and launcher else ("\n".join(lines) if fallback else "")
        return message

    def _probe(self, c: Container, now: float) -> None:
        assert c.proc is not None
        target = ProbeTarget(
            pod_ip=self.ip or "",
            pid=c.proc.pid,
            env=c.env,
            ports={p["name"]: int(p["containerPort"]) for p in c.spec.get("ports") or [] if p.get("name")},
            run_dir=c.dir(self.pod_dir),
        )
        if c.startup is not None and not c.state.started:
            if c.startup.due(now):
                ok, msg = probe_once(c.startup.probe, target)
                verdict = c.startup.observe(ok, msg, time.monotonic())
                if verdict is True:
                    c.state.started = True
                elif verdict is False:
                    log.info("%s container=%s: startup probe failed (%s); restarting", self.ctx, c.name, msg)
                    self._kill_for_restart(c)
                    return
            if not c.state.started:
                return
        if c.liveness is not None and c.liveness.due(now):
            ok, msg = probe_once(c.liveness.probe, target)
            if c.liveness.observe(ok, msg, time.monotonic()) is False:
                log.info("%s container=%s: liveness probe failed (%s); restarting", self.ctx, c.name, msg)
                self._kill_for_restart(c)
                return
        if c.readiness is not None and c.readiness.due(now):
            ok, msg = probe_once(c.readiness.probe, target)
            verdict = c.readiness.observe(ok, msg, time.monotonic())
            if bool(verdict) != c.state.ready:
                log.info("%s container=%s: readiness now %s (%s)", self.ctx, c.name, bool(verdict), msg)
        if not c.init:
            c.state.ready = c.state.started and (c.readiness is None or bool(c.readiness.result))

    def _kill_for_restart(self, c: Container) -> None:
        assert c.proc is not None
        code = c.proc.stop(float(c.spec.get("terminationGracePeriodSeconds") or self._grace()))
        self._on_exit(c, 137 if code is None else code)

    # ----- status -----

    def _sync_status(self) -> None:
        if self.frozen:
            return
        status = pod_status(
            self.restart_policy,
            [c.state for c in self.init_containers],
            [c.state for c in self.containers],
            sandbox_ready=bool(self.netns),
            pod_ip=self.ip,
            host_ip=self.kl.host_ip,
            start_time=self.start_time,
            prev_conditions=self.prev_conditions,
            now=now_iso(),
        )
        if status == self.last_sent:
            return
        try:
            self.kl.api.merge_patch(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
        except ApiError as exc:
            if exc.status in (404, 409, 422):
                log.info("%s: status update refused (%s); the pod is gone", self.ctx, exc.status)
                self.gone = exc.status == 404
                return
            raise
        self.last_sent = status
        self.prev_conditions = status["conditions"]

    # ----- stopping -----

    def _stop_processes(self, grace_s: float) -> None:
        """SIGTERM every running container's process group, wait up to grace_s for all, then SIGKILL."""
        running = [c for c in [*self.init_containers, *self.containers] if c.proc is not None]
        for c in running:
            c.proc.signal_group(15)
        deadline = time.monotonic() + grace_s
        while any(c.proc.poll() is None for c in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in running:
            c.proc.kill_tree()
            code = c.proc.poll()
            c.state.terminated = Terminated(
                code if code is not None else 137,
                terminated_reason(code or 137),
                c.state.running_since or now_iso(),
                now_iso(),
                self._termination_message(c, code or 137),
            )
            c.state.running_since, c.state.ready, c.proc = None, False, None
        if running:
            log.info("%s: stopped %d container(s)", self.ctx, len(running))

    def _teardown_sandbox(self, keep_ip: bool = False) -> None:
        network.delete_pod_netns(self.uid)
        unmount_under(self.pod_dir)
        self.kl.ipam.release(self.uid)
        self.netns = None
        if not keep_ip:
            self.ip = None
        created = self.pod_dir / "host-created"
        if created.exists():
            for path in sorted(set(created.read_text().split()), key=len, reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    def _stop_everything(self, grace_s: float) -> None:
        self._stop_processes(grace_s)
        self._teardown_sandbox(keep_ip=True)

    def _remove_pod_files(self) -> None:
        """Once the pod is gone: drop volumes, /tmp and overlay scratch; keep the logs for post-mortems."""
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.pod_dir / "tmp", ignore_errors=True)
        for run_dir in self.pod_dir.glob("*/run-*"):
            shutil.rmtree(run_dir, ignore_errors=True)

    def _finalize_deletion(self) -> None:
        grace = self._grace()
        log.info("%s: deletion requested; stopping containers with %.0fs grace", self.ctx, grace)
        self._stop_everything(grace)
        try:
            self.last_sent = None
            self._sync_status()
        except Exception as exc:
            log.info("%s: last status update failed: %s", self.ctx, exc)
        try:
            self.kl.api.delete(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
            log.info("%s: deleted", self.ctx)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("%s: final delete failed: %s", self.ctx, exc)
                return
        self._remove_pod_files()
