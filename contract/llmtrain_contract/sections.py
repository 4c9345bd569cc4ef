"""The spec sections the user writes and the trainer reads, declared once.

The operator's API (`LLMTrainingJobSpec`) embeds these models, so the CRD schema, `docs/api.md` and the trainer's
config all derive from them. Python names are snake_case, the wire names camelCase; unknown keys are rejected so a
typo fails loudly instead of silently training the wrong thing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .metrics import DEFAULT_METRICS_PORT
from .presets import PresetName
from .rules import (
    CEL_HEADS_MULTIPLE_OF_KV,
    CEL_INIT_ALONE,
    CEL_PRESET_OR_DIMS,
    CEL_SOURCE_OR_SOURCES,
    cel,
    init_conflicts,
    missing_model_dims,
)

Precision = Literal["bf16", "fp16", "fp32"]
Sharding = Literal["zero2", "zero3", "hybrid"]
DEFAULT_SHARDING: Sharding = "zero3"  # what an unset parallelism.sharding means outside the operator


class Section(BaseModel):
    """camelCase on the wire, unknown keys rejected, immutable once parsed."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSection(Section):
    """Transformer shape: a preset (shapes defined by the contract), optionally overridden by explicit dimensions;
    or a Hugging Face Llama to start from (init), whose config.json is the shape."""

    model_config = ConfigDict(json_schema_extra=cel(CEL_PRESET_OR_DIMS, CEL_INIT_ALONE, CEL_HEADS_MULTIPLE_OF_KV))

    init: str | None = Field(
        None,
        min_length=1,
        description="Start from a Hugging Face Llama: a directory on a mounted volume (podTemplate) holding "
        "config.json and model.safetensors (or shards and their index). Its config.json is the shape, so preset "
        "and the dimensions below stay unset. The weights are loaded at step 0 only: a restarted run resumes from "
        "its own checkpoints.",
    )
    preset: PresetName | None = Field(None, description="Named model shape; explicit dimensions below override it.")
    dim: int | None = Field(None, ge=8, description="Hidden size.")
    layers: int | None = Field(None, ge=1, description="Number of transformer blocks.")
    heads: int | None = Field(None, ge=1, description="Attention heads.")
    kv_heads: int | None = Field(None, ge=1, description="Key/value heads (grouped-query attention); = heads if unset.")
    ffn_dim: int | None = Field(None, ge=8, description="SwiGLU feed-forward hidden size.")
    vocab_size: int | None = Field(None, ge=2, description="Vocabulary size; the tokenizer's when unset.")
    max_seq_len: int | None = Field(None, ge=1, description="Longest sequence the rotary embeddings are built for.")
    tie_embeddings: bool | None = Field(None, description="Share the input embedding with the output projection.")
    rope_theta: float | None = Field(None, gt=0, description="RoPE base frequency; the preset's (or 10000) when unset.")
    norm_eps: float | None = Field(None, gt=0, description="RMSNorm epsilon; the preset's (or 1e-5) when unset.")

    @model_validator(mode="after")
    def _preset_or_dims(self) -> ModelSection:
        conflicts = init_conflicts(self.init, self.model_dump(by_alias=True, exclude={"init"}))
        if conflicts:
            fields = ", ".join(f"model.{name}" for name in conflicts)
            raise ValueError(f"model.init takes the shape from its config.json: unset {fields}")
        dims = {"dim": self.dim, "layers": self.layers, "heads": self.heads}
        missing = missing_model_dims(self.preset, dims, init=self.init)
        if missing:
            raise ValueError(f"set model.init or model.preset, or give model {', '.join(missing)}")
        return self

    @property
    def shape_on_volume(self) -> bool:
        """The shape is in model.init's config.json, which only the trainer can read (not the operator)."""
        return self.init is not None


class WeightedSource(Section):
    """One training source of a mixture and its share of the sequences drawn."""

    path: str = Field(
        min_length=1,
        description="A shard directory (with manifest.json), a glob of .bin shards, one .bin file or a text file.",
    )
    weight: float = Field(1.0, gt=0, description="Relative share of each global batch drawn from this source.")


class DataSection(Section):
    """Training data."""

    model_config = ConfigDict(json_schema_extra=cel(CEL_SOURCE_OR_SOURCES))

    source: str = Field(
        "synthetic",
        min_length=1,
        description="'synthetic'; a directory of token shards written by llmtrain_trainer.prepare (its "
        "manifest.json); a glob of .bin shards; one .bin file; or a text file (tokenised at start-up: small data "
        "only). Shards are memory-mapped, never read whole.",
    )
    sources: list[WeightedSource] | None = Field(
        None,
        min_length=1,
        description="A weighted mixture of sources (each as data.source, not 'synthetic'); replaces data.source.",
    )
    tokenizer: str = Field("byte", description="'byte', 'tiktoken:<encoding>' or 'hf:<path to tokenizer.json>'.")
    seq_len: int = Field(256, ge=2, description="Tokens per training sequence.")
    bin_dtype: Literal["uint16", "uint32"] | None = Field(
        None,
        description="Element type of .bin files without a sidecar (uint16 when unset). Shards with a sidecar or "
        "manifest carry their own; when set, it must match theirs.",
    )

    @model_validator(mode="after")
    def _source_or_sources(self) -> DataSection:
        if self.sources is not None and self.source != "synthetic":
            raise ValueError("set data.source or data.sources, not both")
        return self


class EvaluationSection(Section):
    """Validation loss on held-out data, computed every `interval` steps and at the end."""

    source: str = Field(
        min_length=1,
        description="Held-out data, in any form data.source accepts (a shard directory, a glob, a .bin or text file).",
    )
    interval: int = Field(100, ge=1, description="Evaluate every this many optimizer steps (and after the last).")
    batches: int = Field(
        10, ge=1, description="Global batches (training.globalBatchSize sequences each) per evaluation."
    )


class ParallelismSection(Section):
    """How the model and batch are split across ranks."""

    data_parallel: Literal["ddp", "fsdp"] = Field(
        "fsdp", description="Data parallelism: ddp replicates the model, fsdp shards it (FSDP2)."
    )
    sharding: Sharding | None = Field(
        None,
        description="FSDP sharding: zero2 keeps parameters after forward (no re-all-gather in backward: faster, more "
        "memory), zero3 reshards them, hybrid shards within a node and replicates across nodes. Unset: the operator "
        "chooses at admission: zero2 when the job's GPU nodes declare their memory (label nvidia.com/gpu.memory) "
        "and the zero2 estimate plus the estimator's 15% margin fits it, else zero3; the choice is recorded in "
        "status.sharding and pinned from the job's first pods on. A trainer run outside the operator treats unset "
        "as zero3. Ignored for ddp.",
    )
    tensor_parallel: int = Field(
        1, ge=1, description="Tensor-parallel degree within a node; must divide procsPerNode and model.heads."
    )
    loss_parallel: bool = Field(
        True, description="With tensorParallel > 1, compute the loss on vocabulary-sharded logits (no gather)."
    )

    @property
    def effective_sharding(self) -> Sharding:
        """The sharding the trainer runs: unset means zero3. The operator renders its pinned choice into the
        config, so unset reaches only a trainer run outside it; every rank reads the same config, never choosing
        by itself (ranks that disagreed would hang in collectives)."""
        return self.sharding or DEFAULT_SHARDING

    def with_sharding(self, sharding: Sharding | None) -> ParallelismSection:
        """This section with `sharding` set (the operator's resolved choice)."""
        return self.model_copy(update={"sharding": sharding})


class OptimizerSection(Section):
    """AdamW hyper-parameters."""

    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    betas: list[float] = Field([0.9, 0.95], min_length=2, max_length=2, description="AdamW beta1 and beta2.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay (not applied to norms/embeddings).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")


class ScheduleSection(Section):
    """Learning-rate schedule."""

    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps; must be smaller than training.steps.")
    decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay shape after warmup.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")


class TrainingSection(Section):
    """Steps and batch sizes."""

    steps: int = Field(ge=1, description="Optimizer steps to run.")
    global_batch_size: int = Field(
        ge=1, description="Sequences per optimizer step across all ranks; a multiple of microBatchSize x data-parallel."
    )
    micro_batch_size: int = Field(1, ge=1, description="Sequences per rank per forward pass.")
    grad_clip: float = Field(1.0, ge=0, description="Maximum global gradient norm; 0 disables clipping.")
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        "none", description="Activation recomputation policy."
    )
    compile: bool | None = Field(
        None,
        description="torch.compile each transformer block. Unset: on when the trainer runs on CUDA GPUs (faster "
        "once compiled, about a minute of compilation at start), off on CPU (where compiling costs more than it "
        "gains on the small models CPU runs are for); true or false forces it.",
    )
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    divergence_patience: int = Field(
        5, ge=1, description="Consecutive steps with a non-finite loss after which the run has diverged (exit 79)."
    )
    collective_timeout_seconds: int = Field(
        1800,
        ge=1,
        description="Process-group timeout: a collective (all-reduce, barrier, checkpoint exchange) that waits longer "
        "than this ends the process with an error, so a hung peer restarts the gang instead of freezing it.",
    )


class CheckpointPolicy(Section):
    """How often to checkpoint and how many to keep (where is the operator's or the caller's business)."""

    interval: int = Field(100, ge=1, description="Save every this many steps (and at the end).")
    keep: int = Field(3, ge=1, description="Keep the newest this many complete checkpoints.")
    async_save: bool = Field(False, description="Write checkpoints in the background.")
    save_on_sigterm: bool = Field(True, description="Save when SIGTERM arrives (pod deletion, preemption).")
    export: Literal["none", "huggingface"] = Field(
        "none",
        description="At the end of a successful run, also write the final model as a Hugging Face Llama directory "
        "(config.json, safetensors, the data.tokenizer 'hf:' files) to <checkpoint dir>/huggingface, in the "
        "training precision (fp32 runs: float32; bf16/fp16: that type). status.exportPath says where.",
    )


class MetricsSection(Section):
    """The trainer's Prometheus endpoint (rank 0's is read for status.progress)."""

    port: int = Field(
        DEFAULT_METRICS_PORT,
        ge=0,
        le=65535,
        description="Port of the trainer's /metrics endpoint (0: none; the operator needs one for status.progress).",
    )
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s per device for MFU; the trainer's GPU table when unset."
    )


class LoggingSection(Section):
    """Trainer log output."""

    interval: int = Field(10, ge=1, description="Rank 0 logs every this many steps.")
    json_lines: bool = Field(False, alias="json", description="Log JSON lines instead of text.")
