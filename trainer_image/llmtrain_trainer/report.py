"""Progress reporting for your own training script: the llmtrain contract without the built-in trainer.

Standard library only (no torch, no prometheus_client), so any script can use it:

    from llmtrain_trainer import report

    ckpt = report.checkpoint_dir()                 # $LLMTRAIN_CHECKPOINT_DIR (created), None without a volume
    for step in range(start, steps):
        loss = train_step()
        report.report(step=step + 1, loss=loss, tokens=tokens_per_step, total_steps=steps)
        if ckpt and (step + 1) % 50 == 0:
            save(ckpt, step + 1)
            report.checkpoint_saved(step + 1)
    report.done()                                  # exact final progress for the operator

Call it on every rank: only global rank 0 ($RANK, set by torchrun) serves `http://$POD_IP:$LLMTRAIN_METRICS_PORT
/metrics`, with the metric names of `llmtrain_contract.metrics`, so `kubectl get ltj`, status.progress, the ETA,
the Grafana dashboard and Prometheus alerts work as for the built-in trainer. `fail(78, "...")` stops the job
for good (bad config); 79 means diverged. The page: docs/custom-trainer.md.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NoReturn

from llmtrain_contract import metrics as names
from llmtrain_contract.exit_codes import (
    DEFAULT_TERMINATION_LOG,
    EXIT_BAD_CONFIG,
    EXIT_DIVERGED,
    TERMINATION_LOG_ENV,
    termination_record,
)

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_DIVERGED",
    "Reporter",
    "checkpoint_dir",
    "checkpoint_saved",
    "done",
    "fail",
    "report",
    "restart_attempt",
    "update",
]

METRICS_PORT_ENV = "LLMTRAIN_METRICS_PORT"
CHECKPOINT_DIR_ENV = "LLMTRAIN_CHECKPOINT_DIR"
RESTART_ATTEMPT_ENV = "LLMTRAIN_RESTART_ATTEMPT"
# Step-time histogram buckets (seconds): the dashboard's step-time quantiles read them.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def checkpoint_dir() -> Path | None:
    """The job's checkpoint directory (on the shared checkpoint volume, the same after a gang restart), created;
    None when the job has no `checkpoint` volume."""
    raw = os.environ.get(CHECKPOINT_DIR_ENV)
    if not raw:
        return None
    path = Path(raw)
    path.mkdir(parents=True, exist_ok=True)
    return path


def restart_attempt() -> int:
    """0 for the job's first gang, N after N gang restarts."""
    return int(os.environ.get(RESTART_ATTEMPT_ENV) or 0)


def _global_rank() -> int:
    return int(os.environ.get("RANK") or 0)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Reporter:
    """The training series of one run; global rank 0 serves them. Thread-safe; all values optional."""

    def __init__(self, *, port: int | None = None, job: str | None = None, serve: bool | None = None) -> None:
        self.port = int(os.environ.get(METRICS_PORT_ENV) or names.DEFAULT_METRICS_PORT) if port is None else port
        self.job = job or os.environ.get("LLMTRAIN_JOB_NAME") or "local"
        self.node_rank = os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or "0"
        self.serve = (_global_rank() == 0) if serve is None else serve
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._started = False
        self._last_call = time.monotonic()
        self.step: int | None = None
        self.total_steps: int | None = None
        self.loss: float | None = None
        self.tokens_total = 0.0
        self.tokens_per_second: float | None = None
        self.last_checkpoint_step: int | None = None
        self.step_count = 0
        self.step_sum = 0.0
        self.bucket_counts = [0] * len(BUCKETS)

    # -- what a script calls --------------------------------------------------------------------------------------
    def report(
        self,
        *,
        step: int,
        loss: float | None = None,
        tokens: float | None = None,
        total_steps: int | None = None,
        step_seconds: float | None = None,
    ) -> None:
        """One optimizer step done. `tokens`: tokens trained on in this step by the whole job (all ranks);
        `step_seconds`: its wall time (default: the time since the previous call)."""
        now = time.monotonic()
        seconds = now - self._last_call if step_seconds is None else step_seconds
        self._last_call = now
        with self._lock:
            self.step = int(step)
            if total_steps is not None:
                self.total_steps = int(total_steps)
            if loss is not None:
                self.loss = float(loss)
            if tokens is not None:
                self.tokens_total += float(tokens)
                self.tokens_per_second = float(tokens) / seconds if seconds > 0 else None
            self.step_count += 1
            self.step_sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1
        self._ensure_server()

    def update(self, *, step: int | None = None, loss: float | None = None, total_steps: int | None = None) -> None:
        """Set values without counting a step: the step a resumed run starts from, a loss logged later."""
        with self._lock:
            if step is not None:
                self.step = int(step)
            if loss is not None:
                self.loss = float(loss)
            if total_steps is not None:
                self.total_steps = int(total_steps)
        self._ensure_server()

    def checkpoint_saved(self, step: int) -> None:
        """A complete checkpoint of `step` exists (status.progress.lastCheckpointStep)."""
        with self._lock:
            self.last_checkpoint_step = int(step)
        self._ensure_server()

    def done(self) -> None:
        """Training finished: global rank 0 leaves the final progress in the termination record for the operator
        (the metrics endpoint goes away with the pod)."""
        if not self.serve:
            return
        with self._lock:
            summary = {
                "step": self.step,
                "totalSteps": self.total_steps,
                "loss": self.loss if self.loss is not None and math.isfinite(self.loss) else None,
                "lastCheckpointStep": self.last_checkpoint_step,
            }
        _write_record(termination_record(0, "training finished", **summary))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- the endpoint -------------------------------------------------------------------------------------------
    def exposition(self) -> str:
        """The Prometheus text format of the current values (what /metrics serves)."""
        labels = f'job="{self.job}",node_rank="{self.node_rank}"'
        lines: list[str] = []

        def sample(name: str, kind: str, doc: str, value: float | None) -> None:
            if value is not None:
                lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {_number(value)}"])

        with self._lock:
            sample(names.STEP, "gauge", "Optimizer steps done.", self.step)
            sample(names.TOTAL_STEPS, "gauge", "Optimizer steps the job will run.", self.total_steps)
            sample(names.LOSS, "gauge", "Training loss of the last step.", self.loss)
            sample(f"{names.TOKENS}_total", "counter", "Tokens trained on (all ranks).", self.tokens_total)
            sample(names.TOKENS_PER_SECOND, "gauge", "Job-wide training throughput.", self.tokens_per_second)
            sample(names.LAST_CHECKPOINT_STEP, "gauge", "Newest complete checkpoint.", self.last_checkpoint_step)
            if self.step_count:
                name = names.STEP_SECONDS
                lines += [f"# HELP {name} Step wall time.", f"# TYPE {name} histogram"]
                for bound, count in zip(BUCKETS, self.bucket_counts, strict=True):
                    lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {count}')
                lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.step_count}')
                lines.append(f"{name}_count{{{labels}}} {self.step_count}")
                lines.append(f"{name}_sum{{{labels}}} {_number(self.step_sum)}")
        return "\n".join(lines) + "\n"

    def _ensure_server(self) -> None:
        if self._started or not self.serve or self.port <= 0:
            return
        self._started = True
        reporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != names.METRICS_PATH:
                    self.send_error(404)
                    return
                body = reporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds: keep the log clean
                pass

        host = os.environ.get("POD_IP") or "0.0.0.0"
        try:
            self._server = ThreadingHTTPServer((host, self.port), Handler)
        except OSError as e:  # never stop training for the sake of metrics
            print(f"llmtrain: metrics endpoint {host}:{self.port} not served: {e}", file=sys.stderr, flush=True)
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="llmtrain-metrics", daemon=True).start()


def _write_record(line: str) -> None:
    path = Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))
    try:
        with path.open("w") as f:
            f.write(line + "\n")
    except OSError:
        pass  # outside Kubernetes the file may not be writable


def fail(code: int, message: str) -> NoReturn:
    """Stop this process with `code`, telling the operator why: 78 (bad config) and 79 (diverged) fail the job
    at once, without restarts; anything else is retried with a gang restart."""
    print(f"llmtrain: {message}", file=sys.stderr, flush=True)
    _write_record(termination_record(code, message))
    sys.exit(code)


_default: Reporter | None = None
_default_lock = threading.Lock()


def _reporter() -> Reporter:
    global _default
    with _default_lock:
        if _default is None:
            _default = Reporter()
        return _default


def report(
    *,
    step: int,
    loss: float | None = None,
    tokens: float | None = None,
    total_steps: int | None = None,
    step_seconds: float | None = None,
) -> None:
    """Report one finished optimizer step (see Reporter.report)."""
    _reporter().report(step=step, loss=loss, tokens=tokens, total_steps=total_steps, step_seconds=step_seconds)


def update(*, step: int | None = None, loss: float | None = None, total_steps: int | None = None) -> None:
    """Set values without counting a step (see Reporter.update)."""
    _reporter().update(step=step, loss=loss, total_steps=total_steps)


def checkpoint_saved(step: int) -> None:
    """Report a complete checkpoint of `step`."""
    _reporter().checkpoint_saved(step)


def done() -> None:
    """Report that training finished (global rank 0 writes the final progress for the operator)."""
    _reporter().done()
