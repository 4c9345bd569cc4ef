"""A plain PyTorch DDP training script that opts into the llmtrain contract (docs/custom-trainer.md).

It runs anywhere torchrun does: `torchrun --standalone --nproc-per-node 2 train_ddp.py`, or as an LLMTrainingJob
with `spec.trainer` (job.yaml). What it takes from the operator, all optional:

- RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT: set by torchrun, read by `init_process_group()`;
- LLMTRAIN_BACKEND: gloo on CPU pods, nccl with GPUs;
- LLMTRAIN_CHECKPOINT_DIR (via report.checkpoint_dir()): where to save and resume, the same after a gang restart;
- LLMTRAIN_RESTART_ATTEMPT: which gang this is (0 first);
- progress on the metrics port through llmtrain_trainer.report, so `kubectl get ltj` shows step and loss;
- exit 78 for a bad argument (every rank checks it), so the job fails at once instead of restarting.

The model is a tiny next-token predictor (embedding + MLP) on a synthetic token stream in which each token has a
fixed successor 90% of the time, so the loss visibly falls from ln(256) = 5.5 toward about 1.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from llmtrain_trainer import report
from torch.nn.parallel import DistributedDataParallel

VOCAB = 256


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per rank per step")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--checkpoint-interval", type=int, default=int(os.environ.get("LLMTRAIN_CHECKPOINT_INTERVAL", 20)))
    p.add_argument("--keep", type=int, default=int(os.environ.get("LLMTRAIN_CHECKPOINT_KEEP", 2)))
    p.add_argument("--seconds-per-step", type=float, default=0.0, help="pace the run (demos and tests)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class TinyLM(torch.nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.out = torch.nn.Linear(dim, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        return self.out(h + self.mlp(h))


def batch(step: int, rank: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of step `step`'s batch: deterministic, so a resumed run sees the data it would have."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
    successor = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(args.seed))
    seq = torch.empty(args.batch_size, args.seq_len + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(VOCAB, (args.batch_size,), generator=g)
    for t in range(args.seq_len):
        follow = torch.rand(args.batch_size, generator=g) < 0.9
        seq[:, t + 1] = torch.where(follow, successor[seq[:, t]], torch.randint(VOCAB, (args.batch_size,), generator=g))
    return seq[:, :-1], seq[:, 1:]


def newest_checkpoint(directory: Path | None) -> Path | None:
    found = sorted(directory.glob("step-*.pt")) if directory else []
    return found[-1] if found else None


def save_checkpoint(
    directory: Path, step: int, model: torch.nn.Module, optim: torch.optim.Optimizer, keep: int
) -> None:
    """Rank 0 writes the replicated state; the rename makes a checkpoint appear complete or not at all."""
    tmp = directory / f".step-{step:08d}.pt.tmp"
    torch.save({"step": step, "model": model.state_dict(), "optim": optim.state_dict()}, tmp)
    tmp.replace(directory / f"step-{step:08d}.pt")
    for old in sorted(directory.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def main() -> None:
    args = parse_args()
    # A bad argument can never work: every rank checks it and exits 78, so the operator fails the job at once.
    if args.lr <= 0 or args.steps < 1:
        report.fail(report.EXIT_BAD_CONFIG, f"--lr must be > 0 and --steps >= 1 (got {args.lr}, {args.steps})")

    backend = os.environ.get("LLMTRAIN_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)

    torch.manual_seed(args.seed)
    model = TinyLM().to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr)

    directory = report.checkpoint_dir()
    start = 0
    newest = newest_checkpoint(directory)
    if newest is not None:
        state = torch.load(newest, map_location=device)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        start = state["step"]
        report.checkpoint_saved(start)
    report.update(step=start, total_steps=args.steps)
    if rank == 0:
        where = f"resumed from step {start} ({newest})" if newest else "starting from scratch"
        print(f"train_ddp: attempt {report.restart_attempt()}, world {world}, {where}", flush=True)

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    tokens_per_step = args.batch_size * args.seq_len * world
    for step in range(start, args.steps):
        began = time.monotonic()
        inputs, targets = (t.to(device) for t in batch(step, rank, args))
        loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        loss = loss.detach()
        dist.all_reduce(loss)  # the mean over ranks (SUM: gloo has no AVG)
        loss /= world
        time.sleep(max(args.seconds_per_step - (time.monotonic() - began), 0))
        done = step + 1
        report.report(step=done, loss=loss.item(), tokens=tokens_per_step, total_steps=args.steps)
        if rank == 0 and (done % 10 == 0 or done == args.steps):
            print(f"train_ddp: step {done}/{args.steps} loss {loss.item():.4f}", flush=True)
        if directory is not None and (done % args.checkpoint_interval == 0 or done == args.steps):
            if rank == 0:
                save_checkpoint(directory, done, model, optim, args.keep)
                report.checkpoint_saved(done)
            dist.barrier()

    report.done()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
