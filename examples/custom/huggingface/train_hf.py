"""A Hugging Face `Trainer` script with llmtrain's progress callback (docs/custom-trainer.md).

A small GPT-2-shaped model, built from a config (nothing is downloaded), learns a synthetic token stream in which
each token has a fixed successor 90% of the time. The Trainer does the distribution itself (it reads torchrun's
RANK/LOCAL_RANK/WORLD_SIZE), checkpoints into $LLMTRAIN_CHECKPOINT_DIR when the job has a checkpoint volume and
resumes from the newest one after a gang restart; `LLMTrainCallback` serves the progress (step, loss, tokens/s,
checkpoints) on the metrics port, so `kubectl get ltj` shows it.

    torchrun --standalone --nproc-per-node 2 train_hf.py --steps 40
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from llmtrain_trainer import report
from llmtrain_trainer.hf import LLMTrainCallback
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

VOCAB = 256


class SuccessorStream(torch.utils.data.Dataset):
    """Sequences where each token is followed by its fixed successor 90% of the time (deterministic per index)."""

    def __init__(self, size: int, seq_len: int, seed: int = 0) -> None:
        self.size, self.seq_len, self.seed = size, seq_len, seed
        self.successor = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        seq = torch.empty(self.seq_len, dtype=torch.long)
        seq[0] = torch.randint(VOCAB, (1,), generator=g)
        for t in range(1, self.seq_len):
            follow = torch.rand(1, generator=g).item() < 0.9
            seq[t] = self.successor[seq[t - 1]] if follow else torch.randint(VOCAB, (1,), generator=g)
        return {"input_ids": seq, "labels": seq.clone()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--save-steps", type=int, default=int(os.environ.get("LLMTRAIN_CHECKPOINT_INTERVAL", 20)))
    args = p.parse_args()

    gpu = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", 1))
    checkpoints = report.checkpoint_dir()
    output_dir = str(checkpoints) if checkpoints else tempfile.mkdtemp(prefix="hf-")
    training = TrainingArguments(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=3e-3,
        warmup_steps=min(5, args.steps - 1),
        logging_steps=5,
        save_steps=args.save_steps,
        save_total_limit=int(os.environ.get("LLMTRAIN_CHECKPOINT_KEEP", 2)),
        save_strategy="steps" if checkpoints else "no",
        report_to=[],
        use_cpu=not gpu,
        ddp_backend=None if gpu else "gloo",
        bf16=gpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        seed=0,
    )
    config = GPT2Config(vocab_size=VOCAB, n_positions=args.seq_len, n_embd=64, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config)
    dataset = SuccessorStream(size=args.steps * args.batch_size * world, seq_len=args.seq_len)
    callback = LLMTrainCallback(tokens_per_step=args.batch_size * args.seq_len * world)
    trainer = Trainer(model=model, args=training, train_dataset=dataset, callbacks=[callback])
    resume = get_last_checkpoint(output_dir) if checkpoints else None
    if training.process_index == 0:
        print(f"train_hf: attempt {report.restart_attempt()}, world {world}, resume from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)


if __name__ == "__main__":
    main()
