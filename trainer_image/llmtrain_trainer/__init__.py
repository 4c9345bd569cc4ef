"""llmtrain trainer: torchrun LLM pre-training (DDP, FSDP2, tensor parallel, bf16/fp16, AdamW)."""

__version__ = "0.1.0"
