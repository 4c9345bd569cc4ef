"""How long a node pod may take to stop: long enough for the trainer's save on SIGTERM to finish.

Kubernetes kills a pod terminationGracePeriodSeconds after SIGTERM; the trainer answers SIGTERM by finishing its
step and writing a checkpoint (checkpoint.saveOnSigterm). A 30 s or 60 s default truncates the save of a large
model, and the next attempt resumes from an older one. The default is derived from the model the spec resolves to.
"""

from __future__ import annotations

import dataclasses
import math

from llmtrain_contract.presets import PRESETS, resolved_fields, shape_known

from .api import LLMTrainingJobSpec

BASE_GRACE_SECONDS = 60  # finish the step in flight, agree on the stop across ranks, flush logs
# What one checkpoint holds per parameter: fp32 weights (4 bytes) plus AdamW's two fp32 moments (8 bytes).
CHECKPOINT_BYTES_PER_PARAM = 12
# Assumed sustained write bandwidth to the checkpoint volume for the whole gang: a single NFS client's worth.
# Conservative on purpose (every rank writes its shard in parallel, so real volumes are usually faster): a grace
# period that is too long costs nothing unless a pod hangs, one that is too short loses the save.
CHECKPOINT_WRITE_BYTES_PER_SECOND = 200e6
UNKNOWN_VOCAB = 128_256  # the vocabulary comes from the tokenizer and is not known here: assume a large one
# model.init's shape is on a volume the operator cannot read: assume an 8B model (runPolicy can say otherwise)
UNKNOWN_SHAPE = "llama-8b"


def parameter_count(spec: LLMTrainingJobSpec) -> int:
    """Weights of the Llama-style decoder the spec resolves to (embeddings, attention, SwiGLU, norms, output)."""
    shape = resolved_fields(spec.model, seq_len=spec.data.seq_len, tokenizer_vocab=UNKNOWN_VOCAB)
    if not shape_known(shape):
        shape = dataclasses.asdict(PRESETS[UNKNOWN_SHAPE])

    def size(key: str) -> int:
        return int(shape[key])  # type: ignore[call-overload]

    dim, layers, heads, kv_heads = size("dim"), size("n_layers"), size("n_heads"), size("n_kv_heads")
    ffn, vocab = size("ffn_dim"), size("vocab_size")
    head_dim = dim // heads
    attention = dim * head_dim * (heads + 2 * kv_heads) + heads * head_dim * dim
    block = attention + 3 * dim * ffn + 2 * dim
    embeddings = vocab * dim * (1 if shape["tie_embeddings"] else 2)
    return embeddings + layers * block + dim


def default_grace_seconds(spec: LLMTrainingJobSpec) -> int:
    """BASE_GRACE_SECONDS, plus the time to write the model's checkpoint when the trainer saves on SIGTERM.

    A custom script's model is unknown to the operator: it gets the base, and sets the field when it needs more.
    """
    checkpoint = spec.checkpoint
    if checkpoint is None or not checkpoint.save_on_sigterm or spec.model is None:
        return BASE_GRACE_SECONDS
    size = parameter_count(spec) * CHECKPOINT_BYTES_PER_PARAM
    return BASE_GRACE_SECONDS + math.ceil(size / CHECKPOINT_WRITE_BYTES_PER_SECOND)


def termination_grace_seconds(spec: LLMTrainingJobSpec) -> int:
    """runPolicy.terminationGracePeriodSeconds when set, else the derived default."""
    explicit = spec.run_policy.termination_grace_period_seconds
    return explicit if explicit is not None else default_grace_seconds(spec)
