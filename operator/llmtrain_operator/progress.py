"""Training progress from rank 0's Prometheus text (metric names: llmtrain_contract.metrics).

Parsing is pure (`parse_progress`, `with_step_time`); `fetch_progress` does the HTTP read and raises
MetricsUnreachable when nothing answers (the job's Progressing condition says so, and stall detection waits);
an endpoint that answers without a step yet (the trainer is starting) is "no news".
"""

from __future__ import annotations

import logging
import math
import urllib.error
import urllib.request
from datetime import datetime

from llmtrain_contract import metrics as names
from prometheus_client.parser import text_string_to_metric_families

from .api import Progress
from .timestamps import rfc3339

log = logging.getLogger(__name__)


def _fmt_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _round(value: float | None, digits: int) -> float | None:
    """Status is for people (`kubectl get ltj` prints it raw): 4.5331, not 4.533140182495117."""
    return None if value is None else round(value, digits)


def parse_progress(text: str) -> Progress | None:
    """Progress from an exposition text; None if it holds no llmtrain_step."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(names.PREFIX) and not sample.labels.get("kind"):
                values.setdefault(sample.name, sample.value)
    if names.STEP not in values:
        return None

    def num(name: str) -> float | None:
        v = values.get(name)
        return None if v is None or math.isnan(v) or math.isinf(v) else v

    step, total = num(names.STEP), num(names.TOTAL_STEPS)
    eta = None
    count, seconds = num(f"{names.STEP_SECONDS}_count"), num(f"{names.STEP_SECONDS}_sum")
    if step is not None and total is not None and count and seconds is not None:
        eta = _fmt_duration(max(total - step, 0) * seconds / count)
    last_ckpt = num(names.LAST_CHECKPOINT_STEP)
    return Progress(
        step=int(step) if step is not None else None,
        total_steps=int(total) if total is not None else None,
        loss=_round(num(names.LOSS), 4),
        eval_loss=_round(num(names.EVAL_LOSS), 4),
        tokens_per_second=_round(num(names.TOKENS_PER_SECOND), 1),
        mfu=_round(num(names.MFU), 4),
        eta=eta,
        last_checkpoint_step=int(last_ckpt) if last_ckpt is not None and last_ckpt >= 0 else None,
    )


def final_progress(last: Progress | None, summary: dict) -> Progress:
    """Progress once training has finished: rank 0's exit summary (its termination message) over the last sample.

    The metrics endpoint dies with the pod, so the last scrape is up to one resync old; the summary is exact.
    """
    base = last or Progress()

    def num(key: str) -> float | None:
        v = summary.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    step, total, loss, ckpt = num("step"), num("totalSteps"), num("loss"), num("lastCheckpointStep")
    eval_loss = num("evalLoss")  # the final evaluation runs after the last scrape of a short run
    return base.model_copy(
        update={
            "step": int(step) if step is not None else base.step,
            "total_steps": int(total) if total is not None else base.total_steps,
            "loss": _round(loss, 4) if loss is not None else base.loss,
            "eval_loss": _round(eval_loss, 4) if eval_loss is not None else base.eval_loss,
            "last_checkpoint_step": int(ckpt) if ckpt is not None else base.last_checkpoint_step,
            "eta": "0s",
        }
    )


class MetricsUnreachable(Exception):
    """Nothing answered on a node pod's metrics port (refused, timed out, unroutable)."""


def fetch_progress(ip: str, port: int, timeout: float = 2.0) -> Progress | None:
    """GET http://<ip>:<port>/metrics and parse it; None when it answers without a step (not training yet)."""
    url = f"http://{ip}:{port}{names.METRICS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:  # it answered: a server is there, just not a trainer's metrics
        log.debug("metrics endpoint %s answered %s", url, e.code)
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.debug("metrics endpoint %s unreachable: %s", url, e)
        raise MetricsUnreachable(f"{url}: {getattr(e, 'reason', e)}") from e
    try:
        return parse_progress(text)
    except ValueError as e:
        log.debug("metrics endpoint %s served unparsable text: %s", url, e)
        return None


def with_step_time(stored: Progress | None, sample: Progress, now: datetime) -> Progress:
    """The new sample, stamped with when its step was first seen: now if the step moved, else the stored stamp."""
    same_step = stored is not None and stored.step == sample.step and stored.last_step_time is not None
    return sample.model_copy(update={"last_step_time": stored.last_step_time if same_step else rfc3339(now)})


def scrape_backoff(failures: int, interval: float, cap: float = 300.0) -> float:
    """Seconds to skip a job's metrics after `failures` unreachable scrapes in a row: doubling from one resync
    interval, at most `cap`; 0 after a success. One job with a dead endpoint must not slow every resync."""
    if failures <= 0:
        return 0.0
    return min(cap, interval * 2 ** (failures - 1))
