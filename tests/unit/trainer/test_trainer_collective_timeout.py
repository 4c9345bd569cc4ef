"""training.collectiveTimeoutSeconds: a collective one rank never joins ends the run instead of hanging it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from trainer_runs import trainer_env

# Rank 1 never joins the all-reduce (a wedged peer); rank 0 must give up after the 3 s process-group timeout.
HUNG_PEER = """
import time
import torch
import torch.distributed as dist
from llmtrain_trainer.distributed import setup_distributed

rt = setup_distributed(3)
if rt.rank == 1:
    time.sleep(120)
dist.all_reduce(torch.ones(1))
"""


def test_a_collective_a_peer_never_joins_fails_after_the_timeout(tmp_path: Path):
    script = tmp_path / "hung_peer.py"
    script.write_text(HUNG_PEER)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    started = time.monotonic()
    done = subprocess.run(argv, env=trainer_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert done.returncode != 0, done.stdout + done.stderr
    assert time.monotonic() - started < 100, "ended by the timeout, not by rank 1 waking up"
