"""The trainer's metrics endpoint and the metric names the operator, the dashboard and the alerts read.

Each node's local rank 0 serves `http://<pod ip>:<port>/metrics`; global rank 0 also serves the training series.
Every sample carries the labels `job` and `node_rank`.
"""

from __future__ import annotations

DEFAULT_METRICS_PORT = 9090
METRICS_PATH = "/metrics"
LABELS = ("job", "node_rank")

STEP = "llmtrain_step"
TOTAL_STEPS = "llmtrain_total_steps"
LOSS = "llmtrain_loss"
TOKENS = "llmtrain_tokens"  # a Counter: the exposition adds _total
TOKENS_PER_SECOND = "llmtrain_tokens_per_second"
MFU = "llmtrain_mfu"
FLOPS_PER_SECOND = "llmtrain_flops_per_second"
STEP_SECONDS = "llmtrain_step_seconds"  # a Histogram: _count and _sum give the mean step time
GRAD_NORM = "llmtrain_grad_norm"
LEARNING_RATE = "llmtrain_learning_rate"
LOSS_SCALE = "llmtrain_loss_scale"
SKIPPED_STEPS = "llmtrain_skipped_steps"  # a Counter
CHECKPOINT_SECONDS = "llmtrain_checkpoint_seconds"
LAST_CHECKPOINT_STEP = "llmtrain_last_checkpoint_step"
GPU_MEMORY_BYTES = "llmtrain_gpu_memory_bytes"  # label kind: allocated | reserved | peak_allocated
HOST_MEMORY_BYTES = "llmtrain_host_memory_bytes"  # label kind: peak_rss
EVAL_LOSS = "llmtrain_eval_loss"  # validation loss of the last evaluation (absent before the first)
EVAL_PERPLEXITY = "llmtrain_eval_perplexity"  # exp(EVAL_LOSS)
EVAL_STEP = "llmtrain_eval_step"  # the optimizer step EVAL_LOSS was measured at

PREFIX = "llmtrain_"
