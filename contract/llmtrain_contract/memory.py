"""Per-rank peak memory of a training job from its spec alone (issue #12, part 3): no torch, no GPU.

The operator calls `estimate_for_spec` at admission and refuses (or warns about) a job that cannot fit its GPUs,
and `suggest_fit` names the nearest change that would. The estimate models what *our* trainer allocates today
(llmtrain_trainer: model.py, parallelize.py, train.py, optim.py), not an idealised trainer:

- parameters are fp32 master weights, sharded by FSDP2 over `dp_shard` (dim 0, padded) and split by TP;
- gradients are fp32 (FSDP2 reduces in fp32); DDP also keeps fp32 all-reduce buckets as large as the gradients
  (`gradient_as_bucket_view` is off);
- AdamW keeps two fp32 states; it is the fused implementation on every device (optim.build_optimizer), which makes
  no temporaries;
- with mixed precision FSDP2 gathers bf16/fp16 copies (all of them from forward to backward with zero2, a block or
  two at a time with zero3, the root's and the last block's always); plain DDP casts with autocast, whose bf16
  weight copies stay referenced by the autograd graph until backward, and whose residual stream stays fp32;
- with gradient accumulation FSDP2 reduce-scatters every micro-batch (step.gradient_sync), so between
  micro-batches a rank holds its sharded fp32 gradients only; DDP holds the whole model's fp32 `.grad`;
- the loss is loss.py's fused chunked cross-entropy: the logits exist one chunk of tokens at a time
  (`loss_chunk_tokens`) and forward keeps fp32 gradients of the hidden states and of the output weight, which
  backward only scales;
  under tensor parallelism the old path remains (vocabulary-sharded logits, fp32 log-softmax and its gradients);
- grouped-query attention runs SDPA with `enable_gqa`: K and V are saved with their kv heads only;
- selective checkpointing (parallelize.SelectivePolicy) keeps attention outputs, TP collectives' outputs and every
  other matmul's output (wq, wv, w1, w2).

`MemoryEstimate.allocated` is the peak of live tensor bytes (what `torch.cuda.max_memory_allocated` reports);
`total` adds the CUDA context and allocator slack, which no tensor accounts for. The estimate is validated
against measured peaks of the trainer's own code (bench/memory_estimate.py, tests/unit/trainer/
test_memory_estimate_vs_measured.py): within 15% on the validation grid. Not modelled: torch.compile (which
usually saves less), the math-attention fallback (S^2 scores; flash/efficient/CPU-flash kernels are assumed),
checkpoint saving (async saves stage a copy in host memory, not on the GPU), NCCL's own buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import ConfigError
from .presets import ModelShape, resolved_fields

if TYPE_CHECKING:
    from .sections import DataSection, ModelSection, ParallelismSection, TrainingSection

GIB = 2**30
# What the CUDA driver and libraries (cuBLAS, NCCL) take outside PyTorch's allocator, per process.
DEFAULT_CUDA_CONTEXT_BYTES = 1 * GIB
# Caching-allocator fragmentation: reserved exceeds allocated by a few percent in steady training.
DEFAULT_ALLOCATOR_SLACK = 0.05

FP32 = 4
# loss.py's chunking: LOGITS_PER_CHUNK logits per chunk, at least MIN_CHUNK_TOKENS tokens (loss.chunk_tokens_for)
LOSS_LOGITS_PER_CHUNK = 2**26
LOSS_MIN_CHUNK_TOKENS = 128


def loss_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk of the fused loss, as loss.chunk_tokens_for computes them (2097 for a 32k vocabulary)."""
    return max(LOSS_MIN_CHUNK_TOKENS, LOSS_LOGITS_PER_CHUNK // vocab_size)


@dataclass(frozen=True)
class MemoryEstimate:
    """One rank's peak, by component, at the moment of the peak (`phase`: 'backward' or 'optimizer')."""

    parameters: int  # fp32 master shards + gathered/cast compute copies alive at the peak
    gradients: int  # sharded fp32 gradients, or unsharded ones held across accumulation micro-batches
    optimizer_state: int  # AdamW exp_avg + exp_avg_sq (+ the foreach temporary in the optimizer phase)
    activations: int  # tensors saved for backward by the blocks (+ one block's recomputation under AC)
    logits_loss: int  # the loss: a chunk's logits + the fused loss's fp32 gradients (TP: sharded fp32 logits)
    communication: int  # FSDP all-gather / reduce-scatter buffers, DDP gradient buckets
    overhead: int  # CUDA context + allocator slack (0 on CPU)
    phase: str
    lower_bound: bool = False  # the vocabulary was not known (preset's or none): the real peak may be higher
    notes: tuple[str, ...] = ()

    @property
    def allocated(self) -> int:
        """Peak live tensor bytes: comparable with torch.cuda.max_memory_allocated()."""
        return (
            self.parameters
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.logits_loss
            + self.communication
        )

    @property
    def total(self) -> int:
        """What the GPU must hold: allocated + context + slack."""
        return self.allocated + self.overhead

    def fits(self, budget_bytes: int) -> bool:
        return self.total <= budget_bytes

    def summary(self) -> str:
        """One line in GiB per component, e.g. for the operator's event or the trainer's start log."""
        parts = [
            ("params", self.parameters),
            ("grads", self.gradients),
            ("optim", self.optimizer_state),
            ("acts", self.activations),
            ("logits", self.logits_loss),
            ("comm", self.communication),
            ("overhead", self.overhead),
        ]
        body = ", ".join(f"{name} {value / GIB:.2f}" for name, value in parts)
        bound = ">= " if self.lower_bound else ""
        return f"peak {bound}{self.total / GIB:.2f} GiB per rank ({body}; peak in {self.phase})"


@dataclass(frozen=True)
class _Tensor:
    """One parameter as a rank holds it before FSDP: TP-local rows x cols."""

    rows: int
    cols: int
    decay: bool  # in AdamW's weight-decay group (matrices other than the embedding), see optim.param_groups

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def shard(self, n: int) -> int:
        """FSDP2 shards dim 0 into n equal chunks, padding the last: ceil(rows / n) rows per rank."""
        return math.ceil(self.rows / n) * self.cols


def _block_tensors(s: ModelShape, tp: int) -> list[_Tensor]:
    """One block's parameters (model.Block) as parallelize.apply_tp splits them: colwise on dim 0, rowwise dim 1."""
    hd = s.head_dim
    return [
        _Tensor(s.dim, 1, False),  # attention_norm (replicated)
        _Tensor(s.n_heads * hd // tp, s.dim, True),  # wq colwise
        _Tensor(s.n_kv_heads * hd // tp, s.dim, True),  # wk colwise
        _Tensor(s.n_kv_heads * hd // tp, s.dim, True),  # wv colwise
        _Tensor(s.dim, s.n_heads * hd // tp, True),  # wo rowwise
        _Tensor(s.dim, 1, False),  # ffn_norm
        _Tensor(s.ffn_dim // tp, s.dim, True),  # w1 colwise
        _Tensor(s.dim, s.ffn_dim // tp, True),  # w2 rowwise
        _Tensor(s.ffn_dim // tp, s.dim, True),  # w3 colwise
    ]


def _root_tensors(s: ModelShape, tp: int) -> list[_Tensor]:
    """Embedding (rowwise: vocabulary split), final norm, output (colwise: vocabulary split) unless tied."""
    tensors = [_Tensor(s.vocab_size // tp, s.dim, False), _Tensor(s.dim, 1, False)]
    if not s.tie_embeddings:
        tensors.append(_Tensor(s.vocab_size // tp, s.dim, True))
    return tensors


@dataclass(frozen=True)
class _Layout:
    tp: int
    dp_shard: int  # FSDP's shard degree (1 for DDP)
    fsdp: bool  # parameters are FSDP2-managed (FSDP, or DDP with TP: FSDP2 over a shard dim of 1)
    autocast: bool  # plain DDP: autocast casts, parameters stay fp32 modules
    reshard_after_forward: bool


def _layout(world_size: int, procs_per_node: int, data_parallel: str, sharding: str, tp: int) -> _Layout:
    """The mesh of parallelize.parallel_dims / parallelize.parallelize."""
    if data_parallel == "ddp":
        return _Layout(tp, 1, tp > 1, tp == 1, False)
    shard = procs_per_node // tp if sharding == "hybrid" else world_size // tp
    return _Layout(tp, max(shard, 1), True, False, sharding != "zero2")


def estimate_memory(
    shape: ModelShape,
    *,
    world_size: int = 1,
    procs_per_node: int | None = None,
    data_parallel: str = "fsdp",
    sharding: str = "zero3",
    tensor_parallel: int = 1,
    precision: str = "bf16",
    micro_batch_size: int = 1,
    seq_len: int | None = None,
    activation_checkpointing: str = "none",
    gradient_accumulation_steps: int = 1,
    loss_parallel: bool = True,
    device_type: str = "cuda",
    fused_optimizer: bool | None = None,
    cuda_context_bytes: int = DEFAULT_CUDA_CONTEXT_BYTES,
    allocator_slack: float = DEFAULT_ALLOCATOR_SLACK,
    lower_bound: bool = False,
    notes: tuple[str, ...] = (),
) -> MemoryEstimate:
    """One rank's peak for this shape and layout: the largest of three moments of a steady-state step.

    (A) backward begins or runs through a block: every saved activation, the loss's fp32 tensors; (B) backward
    ends: every gradient, reduce buffers in flight; (C) the optimizer step. Components are reported for the winner.

    `device_type` selects the kernels and what the trainer builds there: 'cuda' fused RMSNorm, flash/efficient
    attention and a CUDA context; 'cpu' composite RMSNorm, CPU flash attention and no context. The trainer's AdamW
    is fused (no temporaries) on both; `fused_optimizer=False` estimates foreach AdamW (one fp32 temporary per
    parameter group) instead.
    """
    s = shape
    seq = seq_len or s.max_seq_len
    tp = tensor_parallel
    lay = _layout(world_size, procs_per_node or world_size, data_parallel, sharding, tp)
    accum = gradient_accumulation_steps
    c = FP32 if precision == "fp32" else 2  # bytes of a compute-precision element (bf16/fp16: 2)
    block, root = _block_tensors(s, tp), _root_tensors(s, tp)
    every = block * s.n_layers + root

    # --- persistent state (every phase) -----------------------------------------------------------------------
    n_shard = sum(t.shard(lay.dp_shard) for t in every)  # this rank's fp32 master elements
    master = FP32 * n_shard
    adam_states = 2 * FP32 * n_shard  # exp_avg, exp_avg_sq (optim.build_optimizer: AdamW)
    sharded_grads = FP32 * n_shard
    n_block = sum(t.numel for t in block)  # one block unsharded (TP-local)
    n_root = sum(t.numel for t in root)
    n_full = n_block * s.n_layers + n_root
    # DDP (no TP) all-reduces through fp32 buckets allocated at wrap time, as large as the gradients.
    ddp_buckets = FP32 * n_full if data_parallel == "ddp" and tp == 1 else 0

    # --- compute copies of the parameters during forward/backward ----------------------------------------------
    if lay.fsdp:
        # FSDP2 all-gathers c-byte copies (fp32: a gathered fp32 copy). The root module (embedding, final norm,
        # output) is not resharded after forward (FSDP2's root heuristic), nor is the last block
        # (parallelize.apply_fsdp); zero3 has one more block in flight (prefetch); zero2 keeps them all.
        gathered_blocks = s.n_layers if not lay.reshard_after_forward else min(s.n_layers, 2)
        compute_params = c * (n_root + gathered_blocks * n_block)
        # end of backward: two blocks' unsharded gradients in flight (compute precision), each with its fp32
        # reduce-scatter input when there is more than one shard (FSDP2 reduces in place with one)
        reduce_buffers = 2 * (c + (FP32 if lay.dp_shard > 1 else 0)) * n_block
    else:
        # autocast caches bf16 copies of every matmul weight (not the embedding, not norm gains); the autograd
        # graph keeps them until backward.
        cast = sum(t.numel for t in block if t.decay) * s.n_layers + (0 if s.tie_embeddings else root[-1].numel)
        compute_params = c * cast if c != FP32 else 0
        reduce_buffers = 0

    # --- gradients held during forward/backward ----------------------------------------------------------------
    # Step 1 of accumulation runs with zero_grad(set_to_none) gradients; from the 2nd micro-batch on, FSDP2 keeps
    # the sharded fp32 gradients it reduce-scattered (step.gradient_sync) and DDP the whole model's fp32 .grad.
    held_grads = (sharded_grads if lay.fsdp else FP32 * n_full) if accum > 1 else 0

    # --- activations saved for backward (per micro-batch) ------------------------------------------------------
    b = micro_batch_size
    tokens = b * seq
    r = FP32 if lay.autocast or c == FP32 else c  # residual stream: fp32 under autocast (embedding is not cast)
    bsd, bsf = tokens * s.dim, tokens * s.ffn_dim
    heads_local = s.n_heads // tp
    lse = FP32 * b * heads_local * seq  # SDPA's fp32 logsumexp per head and position
    # RMSNorm (F.rms_norm): on CUDA the fused kernel saves its input and a per-token fp32 rstd; on CPU the composite
    # saves the input upcast to fp32 and the fp32 normalised x. With TP the norms run on sequence shards.
    norm = (r * bsd + FP32 * tokens) // tp if device_type == "cuda" else 2 * FP32 * bsd // tp
    # the matmuls' inputs: FSDP/fp32 save the (all-gathered) norm output once per norm; autocast casts it to bf16
    # separately for each consumer (wq, wk, wv; w1, w3), and each cast copy is saved
    matmul_inputs = (5 if lay.autocast and c != FP32 else 2) * c * bsd
    # SDPA saves q and K after RoPE, V and its output (which wo reads without a copy); with enable_gqa K and V are
    # only the kv heads wide (model.attend)
    q_width, kv_width = c * tokens * s.n_heads * s.head_dim // tp, c * tokens * s.n_kv_heads * s.head_dim // tp
    attention = 2 * q_width + 2 * kv_width + lse
    ffn = 4 * c * bsf // tp  # w1 out (silu input), silu out, w3 out, their product (w2 input)
    per_block = 2 * norm + matmul_inputs + attention + ffn
    block_input = r * bsd // tp
    if activation_checkpointing == "full":
        # each block keeps only its input; backward recomputes one block at a time
        saved = s.n_layers * block_input
        recompute = per_block
    elif activation_checkpointing == "selective":
        sac = _selective_saved(q_width, kv_width, c * bsf // tp, c * bsd, lse, tp)
        saved = s.n_layers * (block_input + sac)
        recompute = per_block - sac
    else:
        saved = s.n_layers * per_block
        recompute = 0
    # the final norm's saved tensors; under TP also the output matmul's all-gathered input (the fused loss saves
    # no input: its gradients are made in forward)
    saved += norm + (c * bsd if tp > 1 else 0)
    # backward through one block: the gradients of its widest intermediates (SwiGLU) alive at once
    block_backward = max(recompute, 0) + 2 * c * bsf // tp + 2 * c * bsd

    # --- logits and loss -----------------------------------------------------------------------------------------
    # the output weight's gradient is made in the weight's dtype: FSDP's gathered compute copy, else fp32
    weight_grad = FP32 if lay.autocast else c
    if tp > 1:
        vocab_local = s.vocab_size // tp if loss_parallel else s.vocab_size
        loss = _sharded_logits_loss(tokens, vocab_local, s.dim, c, weight_grad)
    else:
        loss = _fused_loss(tokens, s.vocab_size, s.dim, c, r, weight_grad)
    # every activation is saved while the loss runs (forward, then at once its backward); then backward runs
    # through the blocks with the output weight's gradient kept (FSDP reduces it with the root's, at the end)
    if loss.peak >= loss.kept + block_backward:
        activations, logits_loss = saved, loss.peak
    else:
        activations, logits_loss = saved + block_backward, loss.kept

    # A: the loss runs (all activations saved) or a block is recomputed/backpropagated
    gathered = compute_params if lay.fsdp else 0  # FSDP's all-gather outputs (autocast's casts: parameters)
    start = (
        master + compute_params - gathered,
        held_grads,
        adam_states,
        activations,
        logits_loss,
        gathered + ddp_buckets,
    )
    # B: the end of backward: every gradient exists (sharded fp32; with accumulation the unsharded fp32 ones are
    # being reduced), the root's gathered copy and its output weight's unsharded gradient are still referenced,
    # reduce buffers in flight (DDP's output gradient is its .grad, counted in the gradients)
    grads_end = held_grads or sharded_grads
    root_gathered = c * n_root if lay.fsdp else 0
    end = (
        master,
        grads_end,
        adam_states,
        0,
        loss.kept if lay.fsdp else 0,
        root_gathered + reduce_buffers + ddp_buckets,
    )

    # C: the optimizer step. The trainer's fused AdamW makes nothing; foreach AdamW (`fused_optimizer=False`) would
    # make sqrt(exp_avg_sq) for a whole parameter group at once
    groups = (
        sum(t.shard(lay.dp_shard) for t in every if t.decay),
        sum(t.shard(lay.dp_shard) for t in every if not t.decay),
    )
    fused = True if fused_optimizer is None else fused_optimizer
    optimizer_temp = 0 if fused else FP32 * max(groups)
    step = (master, sharded_grads, adam_states + optimizer_temp, 0, 0, ddp_buckets)

    phase, parts = max(
        (("backward", start), ("end of backward", end), ("optimizer step", step)), key=lambda p: sum(p[1])
    )
    allocated = sum(parts)
    overhead = cuda_context_bytes + int(allocator_slack * allocated) if device_type == "cuda" else 0
    return MemoryEstimate(*parts, overhead=overhead, phase=phase, lower_bound=lower_bound, notes=notes)


@dataclass(frozen=True)
class _Loss:
    """Bytes the loss adds on top of the saved activations, and what it leaves behind for the rest of backward."""

    forward: int  # peak while its forward runs
    backward: int  # peak while its backward runs
    kept: int  # the output weight's gradient, alive until the end of backward

    @property
    def peak(self) -> int:
        return max(self.forward, self.backward)


def _fused_loss(tokens: int, vocab: int, dim: int, c: int, h: int, w: int) -> _Loss:
    """loss.linear_cross_entropy on `tokens` hidden states of `h` bytes, the weight's gradient made in `w` bytes.

    Forward keeps the fp32 gradients of the hidden states and of the output weight (saved for backward) and the
    hidden states it reads; one chunk at a time holds its compute-precision logits, their fp32 copy (softmax and
    gradient in place) and the gradient cast back, or, in the weight-gradient matmul, the logits, their cast
    gradient and the weight-sized product. In fp32 the cast and the copy are the tensor itself, but the previous
    chunk's buffer is still referenced while the next chunk's logits are made. Backward scales the saved
    gradients: the hidden part in `h` bytes is made, then the weight part through an fp32 temporary.
    """
    chunk = min(tokens, loss_chunk_tokens(vocab))
    logits, weight, hidden = chunk * vocab, vocab * dim, tokens * dim
    if c == FP32:
        chunk_peak = max(FP32 * logits * (2 if tokens > chunk else 1), FP32 * (logits + weight))
    else:
        chunk_peak = max((2 * c + FP32) * logits, 2 * c * logits + c * weight)
    grads = FP32 * (hidden + weight)
    forward = grads + h * hidden + chunk_peak
    backward = grads + h * hidden + (FP32 + w) * weight
    return _Loss(forward, backward, w * weight)


def _sharded_logits_loss(tokens: int, vocab_local: int, dim: int, c: int, w: int) -> _Loss:
    """loss.cross_entropy on the full (TP: vocabulary-sharded under loss_parallel) logits of every token.

    loss_parallel's log-softmax holds the compute-precision logits, their fp32 copy (in fp32 the logits
    themselves), the shifted logits and their exp; its fused nll/log-softmax backward holds the saved log-softmax,
    a zero-filled gradient with the targets' -1s, exp of the log-softmax and their sum, all fp32.
    """
    btv = tokens * vocab_local
    forward = (3 * FP32 if c == FP32 else c + 3 * FP32) * btv
    return _Loss(forward, 4 * FP32 * btv, w * vocab_local * dim)


def _selective_saved(q_width: int, kv_width: int, ffn_width: int, full_width: int, lse: int, tp: int) -> int:
    """What parallelize.SelectivePolicy keeps of one block besides its input (widths in bytes, TP-local).

    Odd-numbered matmuls in call order (wq, wk, wv, wo, w1, w3, w2): wq, wv, w1 and w2, whose output under TP is
    the full-sequence partial sum before its reduce-scatter; SDPA's output and logsumexp; under TP the collectives'
    outputs (the all-gathered inputs of attention and FFN, the reduce-scattered outputs of wo and w2).
    """
    matmuls = q_width + kv_width + ffn_width + full_width
    attention = q_width + lse
    collectives = 2 * full_width + 2 * full_width // tp if tp > 1 else 0
    return matmuls + attention + collectives


# --- from the spec -------------------------------------------------------------------------------------------------

# Vocabularies of the tokenizers the trainer knows without loading anything (data.Tokenizer); tiktoken's encodings
# by name. Others (hf:<file>) are unknown to the torch-free operator.
KNOWN_TOKENIZER_VOCAB = {
    "byte": 256,
    "tiktoken:gpt2": 50257,
    "tiktoken:r50k_base": 50257,
    "tiktoken:p50k_base": 50281,
    "tiktoken:cl100k_base": 100277,
    "tiktoken:o200k_base": 200019,
}


@dataclass(frozen=True)
class MemoryConfig:
    """Everything the estimate depends on, as one value `suggest_fit` can vary field by field."""

    shape: ModelShape
    world_size: int = 1
    procs_per_node: int = 1
    data_parallel: str = "fsdp"
    sharding: str = "zero3"
    tensor_parallel: int = 1
    precision: str = "bf16"
    micro_batch_size: int = 1
    seq_len: int = 256
    activation_checkpointing: str = "none"
    global_batch_size: int | None = None  # when set, accumulation = global / (micro x data-parallel degree)
    gradient_accumulation_steps: int = 1
    loss_parallel: bool = True
    device_type: str = "cuda"
    lower_bound: bool = False
    notes: tuple[str, ...] = ()

    @property
    def data_parallel_degree(self) -> int:
        return self.world_size // self.tensor_parallel

    @property
    def accumulation(self) -> int:
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        return max(1, self.global_batch_size // (self.micro_batch_size * self.data_parallel_degree))

    def estimate(self) -> MemoryEstimate:
        return estimate_memory(
            self.shape,
            world_size=self.world_size,
            procs_per_node=self.procs_per_node,
            data_parallel=self.data_parallel,
            sharding=self.sharding,
            tensor_parallel=self.tensor_parallel,
            precision=self.precision,
            micro_batch_size=self.micro_batch_size,
            seq_len=self.seq_len,
            activation_checkpointing=self.activation_checkpointing,
            gradient_accumulation_steps=self.accumulation,
            loss_parallel=self.loss_parallel,
            device_type=self.device_type,
            lower_bound=self.lower_bound,
            notes=self.notes,
        )


def config_from_spec(
    model: ModelSection,
    data: DataSection,
    parallelism: ParallelismSection,
    training: TrainingSection,
    *,
    precision: str,
    nodes: int,
    procs_per_node: int,
    tokenizer_vocab: int | None = None,
    device_type: str = "cuda",
) -> MemoryConfig:
    """The job's memory configuration as the operator sees it at admission (no tokenizer loaded).

    The vocabulary resolves as the trainer's does (model.vocabSize, else the preset's, else the tokenizer's); when
    none of them is known the smallest one the trainer accepts (the byte tokenizer's 256) is used and the estimate
    is marked a lower bound. A model.init section has no shape here: ConfigError (check model.shape_on_volume).
    """
    if model.shape_on_volume:
        raise ConfigError("model.init: the shape is in its config.json, unknown until the trainer reads it")
    seq = data.seq_len
    if tokenizer_vocab is None and data.source != "synthetic" and not data.source.endswith(".bin"):
        tokenizer_vocab = KNOWN_TOKENIZER_VOCAB.get(data.tokenizer)
    fields = resolved_fields(model, seq_len=seq, tokenizer_vocab=tokenizer_vocab)
    notes: list[str] = []
    lower = False
    if fields["vocab_size"] is None:
        fields["vocab_size"] = KNOWN_TOKENIZER_VOCAB["byte"]
        lower = True
        notes.append(f"vocabulary unknown (tokenizer {data.tokenizer!r}): estimated with 256, a lower bound")
    elif tokenizer_vocab and tokenizer_vocab > fields["vocab_size"]:  # type: ignore[operator]
        fields["vocab_size"] = tokenizer_vocab  # the trainer refuses this; estimate what was asked for
    shape = ModelShape(**fields)  # type: ignore[arg-type]
    return MemoryConfig(
        shape=shape,
        world_size=nodes * procs_per_node,
        procs_per_node=procs_per_node,
        data_parallel=parallelism.data_parallel,
        sharding=parallelism.effective_sharding,
        tensor_parallel=parallelism.tensor_parallel,
        precision=precision,
        micro_batch_size=training.micro_batch_size,
        seq_len=seq,
        activation_checkpointing=training.activation_checkpointing,
        global_batch_size=training.global_batch_size,
        loss_parallel=parallelism.loss_parallel,
        device_type=device_type,
        lower_bound=lower,
        notes=tuple(notes),
    )


def estimate_for_spec(
    model: ModelSection,
    data: DataSection,
    parallelism: ParallelismSection,
    training: TrainingSection,
    *,
    precision: str,
    nodes: int,
    procs_per_node: int,
    tokenizer_vocab: int | None = None,
    device_type: str = "cuda",
) -> MemoryEstimate:
    """`estimate_memory` for a job spec's sections (what the operator calls at admission)."""
    return config_from_spec(
        model,
        data,
        parallelism,
        training,
        precision=precision,
        nodes=nodes,
        procs_per_node=procs_per_node,
        tokenizer_vocab=tokenizer_vocab,
        device_type=device_type,
    ).estimate()


# --- what would fit ----------------------------------------------------------------------------------------------


def _micro_batch_changes(cfg: MemoryConfig) -> list[tuple[str, MemoryConfig]]:
    """Smaller micro-batches that still divide each rank's share of the global batch, largest first."""
    per_rank = cfg.global_batch_size // cfg.data_parallel_degree if cfg.global_batch_size else cfg.micro_batch_size
    out = []
    for mb in range(cfg.micro_batch_size - 1, 0, -1):
        if per_rank % mb == 0 and (cfg.global_batch_size is not None or cfg.micro_batch_size % mb == 0):
            steps = cfg.gradient_accumulation_steps * cfg.micro_batch_size // mb
            out.append(
                (
                    f"training.microBatchSize {cfg.micro_batch_size} → {mb}",
                    replace(cfg, micro_batch_size=mb, gradient_accumulation_steps=steps),
                )
            )
    return out


def _sharding_changes(cfg: MemoryConfig) -> list[tuple[str, MemoryConfig]]:
    """Shard more: ddp → fsdp, zero2/hybrid → zero3 (only meaningful with more than one data-parallel rank)."""
    if cfg.data_parallel_degree < 2:
        return []
    if cfg.data_parallel == "ddp":
        return [("parallelism.dataParallel ddp → fsdp (zero3)", replace(cfg, data_parallel="fsdp", sharding="zero3"))]
    if cfg.sharding != "zero3":
        return [(f"parallelism.sharding {cfg.sharding} → zero3", replace(cfg, sharding="zero3"))]
    return []


def _checkpointing_changes(cfg: MemoryConfig) -> list[tuple[str, MemoryConfig]]:
    order = ["none", "selective", "full"]
    later = order[order.index(cfg.activation_checkpointing) + 1 :]
    return [
        (
            f"training.activationCheckpointing {cfg.activation_checkpointing} → {ac}",
            replace(cfg, activation_checkpointing=ac),
        )
        for ac in later
    ]


def _tensor_parallel_changes(cfg: MemoryConfig) -> list[tuple[str, MemoryConfig]]:
    """Larger TP degrees the trainer accepts: within a node, dividing heads, kv heads, FFN, vocabulary, batch."""
    s, out = cfg.shape, []
    tp = cfg.tensor_parallel * 2
    while tp <= cfg.procs_per_node:
        dims = (s.n_heads, s.n_kv_heads, s.ffn_dim, s.vocab_size, cfg.procs_per_node)
        dp = cfg.world_size // tp
        batch_ok = cfg.global_batch_size is None or cfg.global_batch_size % (cfg.micro_batch_size * dp) == 0
        if all(d % tp == 0 for d in dims) and batch_ok:
            out.append((f"parallelism.tensorParallel {cfg.tensor_parallel} → {tp}", replace(cfg, tensor_parallel=tp)))
        tp *= 2
    return out


def suggest_fit(cfg: MemoryConfig, budget_bytes: int) -> str | None:
    """The nearest change that makes the job fit `budget_bytes` per GPU, as text; None if nothing we try fits.

    A job that already fits gets "no change needed".

    Cheap changes first: a smaller micro-batch (same global batch, more accumulation: same maths, a little slower),
    more sharding, activation checkpointing (selective before full: recomputation costs compute), then tensor
    parallelism. When no single change fits, they are combined in that order.
    """
    if cfg.estimate().fits(budget_bytes):
        return "no change needed"
    families = (_micro_batch_changes, _sharding_changes, _checkpointing_changes, _tensor_parallel_changes)
    for family in families:
        for text, changed in family(cfg):
            est = changed.estimate()
            if est.fits(budget_bytes):
                return f"{text} (peak {est.total / GIB:.1f} GiB of {budget_bytes / GIB:.1f} GiB)"
    # combine: take each family's strongest change in turn, report the first combination that fits
    steps, combined = [], cfg
    for family in families:
        options = family(combined)
        if not options:
            continue
        # the weakest option of this family that fits with what was taken so far, else its strongest
        fitting = [(t, c) for t, c in options if c.estimate().fits(budget_bytes)]
        text, combined = fitting[0] if fitting else options[-1]
        steps.append(text)
        est = combined.estimate()
        if est.fits(budget_bytes):
            return f"{'; '.join(steps)} (peak {est.total / GIB:.1f} GiB of {budget_bytes / GIB:.1f} GiB)"
    return None


def explain(est: MemoryEstimate, budget_bytes: int) -> str:
    """Why it does (not) fit: the peak against the budget and the largest components, for an event message."""
    parts = {
        "parameters": est.parameters,
        "gradients": est.gradients,
        "optimizer state": est.optimizer_state,
        "activations": est.activations,
        "logits/loss": est.logits_loss,
        "communication buffers": est.communication,
        "CUDA context and allocator slack": est.overhead,
    }
    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    verdict = "fits" if est.fits(budget_bytes) else "does not fit"
    bound = " at least" if est.lower_bound else ""
    head = f"needs{bound} {est.total / GIB:.1f} GiB per GPU, {verdict} in {budget_bytes / GIB:.1f} GiB"
    return f"{head}; largest: " + ", ".join(f"{name} {b / GIB:.1f} GiB" for name, b in largest)
