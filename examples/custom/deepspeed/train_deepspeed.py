"""DeepSpeed in the getting-started tutorial's shape, complete: a BERT-style masked-LM, `deepspeed.initialize`,
ZeRO-2 with bf16 (or fp16) and AdamW from ds_config.json, a real data loader, checkpoints and resume.

torchrun (which the operator runs) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, which is all
`deepspeed.init_distributed()` needs: no `deepspeed` launcher, hostfile or ssh. The command-line arguments are
the ones `deepspeed.add_config_arguments` defines (`--deepspeed --deepspeed_config ds_config.json`), where the
tutorials pass a `cmd_args` they never build.

    torchrun --standalone --nproc-per-node 2 train_deepspeed.py --deepspeed --deepspeed_config ds_config.json

The model (4 layers, hidden 128) learns a synthetic token stream (half the tokens follow their predecessor's fixed
successor, the rest are Zipf-distributed) with 15% of the tokens masked: the loss falls from ln(512) = 6.2. On CPU
DeepSpeed uses gloo and the optimizer is torch's AdamW (`torch_adam: true`); set it to false on GPUs for
DeepSpeed's fused Adam.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import deepspeed
import torch
import torch.distributed as dist
from llmtrain_trainer import report
from transformers import BertConfig, BertForMaskedLM

VOCAB = 512
MASK = VOCAB - 1  # the [MASK] token id; the stream uses ids below it


class MaskedSuccessorStream(torch.utils.data.Dataset):
    """BERT-style examples: input_ids with 15% of positions masked, labels -100 everywhere else. Half the tokens
    follow their predecessor's fixed successor, the others are drawn from a Zipf distribution."""

    def __init__(self, size: int, seq_len: int, seed: int = 0) -> None:
        self.size, self.seq_len, self.seed = size, seq_len, seed
        self.successor = torch.randperm(MASK, generator=torch.Generator().manual_seed(seed))
        self.zipf = 1.0 / torch.arange(1, MASK + 1, dtype=torch.float)  # fresh tokens: a few are common

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        seq = torch.empty(self.seq_len, dtype=torch.long)
        fresh = torch.multinomial(self.zipf, self.seq_len, replacement=True, generator=g)
        follow = torch.rand(self.seq_len, generator=g) < 0.5
        seq[0] = fresh[0]
        for t in range(1, self.seq_len):
            seq[t] = self.successor[seq[t - 1]] if follow[t] else fresh[t]
        masked = torch.rand(self.seq_len, generator=g) < 0.15
        masked[0] = True  # at least one prediction per example
        labels = torch.where(masked, seq, torch.full_like(seq, -100))
        inputs = torch.where(masked, torch.full_like(seq, MASK), seq)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(seq), "labels": labels}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--checkpoint-interval", type=int, default=int(os.environ.get("LLMTRAIN_CHECKPOINT_INTERVAL", 20)))
    p.add_argument("--keep", type=int, default=int(os.environ.get("LLMTRAIN_CHECKPOINT_KEEP", 2)))
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))  # the deepspeed launcher's
    p = deepspeed.add_config_arguments(p)  # --deepspeed, --deepspeed_config
    return p.parse_args()


def batches(loader: torch.utils.data.DataLoader, skip: int):
    """The loader's batches epoch after epoch (reshuffled per epoch), after skipping the `skip` already trained."""
    epoch, seen = 0, 0
    while True:
        if hasattr(loader.data_sampler, "set_epoch"):
            loader.data_sampler.set_epoch(epoch)
        for batch in loader:
            seen += 1
            if seen > skip:
                yield batch
        epoch += 1


def main() -> None:
    args = parse_args()
    if not args.deepspeed_config or not os.path.exists(args.deepspeed_config):
        report.fail(report.EXIT_BAD_CONFIG, f"--deepspeed_config {args.deepspeed_config!r} is not a file")
    deepspeed.init_distributed(dist_backend=os.environ.get("LLMTRAIN_BACKEND") or None)
    rank, world = dist.get_rank(), dist.get_world_size()

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=args.seq_len,
    )
    model = BertForMaskedLM(config)
    micro = 8  # must match train_micro_batch_size_per_gpu in ds_config.json
    dataset = MaskedSuccessorStream(size=args.steps * micro * world, seq_len=args.seq_len)
    engine, _, loader, _ = deepspeed.initialize(
        args=args, model=model, model_parameters=model.parameters(), training_data=dataset
    )

    directory = report.checkpoint_dir()
    start = 0
    if directory is not None and (directory / "latest").exists():
        _, client_state = engine.load_checkpoint(str(directory))
        start = int(client_state["step"])
        report.checkpoint_saved(start)
    report.update(step=start, total_steps=args.steps)
    if rank == 0:
        where = f"resumed from step {start}" if start else "starting from scratch"
        print(f"train_deepspeed: attempt {report.restart_attempt()}, world {world}, {where}", flush=True)

    tokens_per_step = engine.train_batch_size() * args.seq_len
    stream = batches(loader, skip=start * engine.gradient_accumulation_steps())
    step = start
    while step < args.steps:
        began = time.monotonic()
        for _ in range(engine.gradient_accumulation_steps()):
            batch = {k: v.to(engine.device) for k, v in next(stream).items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
        step += 1
        loss = loss.detach().float()
        dist.all_reduce(loss)
        loss /= world
        report.report(
            step=step,
            loss=loss.item(),
            tokens=tokens_per_step,
            total_steps=args.steps,
            step_seconds=time.monotonic() - began,
        )
        if rank == 0 and (step % 10 == 0 or step == args.steps):
            print(f"train_deepspeed: step {step}/{args.steps} loss {loss.item():.4f}", flush=True)
        if directory is not None and (step % args.checkpoint_interval == 0 or step == args.steps):
            engine.save_checkpoint(str(directory), tag=f"step-{step:08d}", client_state={"step": step})
            dist.barrier()
            if rank == 0:
                for old in sorted(directory.glob("step-*"))[: -args.keep]:
                    shutil.rmtree(old, ignore_errors=True)
            report.checkpoint_saved(step)

    report.done()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
