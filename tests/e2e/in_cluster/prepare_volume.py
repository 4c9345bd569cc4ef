"""Fill a training volume the way a researcher would, from inside the cluster (the trainer image has the tools):
a byte-level BPE trained on the corpus, a small random Hugging Face Llama saved by transformers (GQA, untied,
rope_theta 50000), and the corpus split into training and held-out text, tokenised into shards by the trainer's
own preparation tool. Prints one JSON line describing what it wrote."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(lines: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def save_model(directory: Path, tokenizer: Tokenizer) -> LlamaConfig:
    """A random LlamaForCausalLM and its tokenizer files, as `save_pretrained` writes them."""
    eos_id = tokenizer.token_to_id(EOS)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS).save_pretrained(directory)
    return config


def prepare_shards(tokenizer_json: Path, text: Path, out: Path) -> dict:
    """`python -m llmtrain_trainer.prepare`, as examples/prepare-data-job.yaml runs it."""
    cmd = [sys.executable, "-m", "llmtrain_trainer.prepare", "--tokenizer", str(tokenizer_json), "--workers", "1"]
    subprocess.run([*cmd, "--out", str(out), str(text)], check=True)
    return json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--model-out", type=Path, required=True, help="where the Hugging Face model is saved")
    parser.add_argument("--data-out", type=Path, required=True, help="raw text under raw/, shards under shards/")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--held-out-lines", type=int, default=150)
    args = parser.parse_args()
    lines = args.corpus.read_text().splitlines()
    train, val = lines[: -args.held_out_lines], lines[-args.held_out_lines :]  # the book's last chapters
    model_dir = args.model_out
    config = save_model(model_dir, train_tokenizer(train, args.vocab_size))
    written = {"vocabSize": config.vocab_size}
    for split, split_lines in (("train", train), ("val", val)):
        text = args.data_out / "raw" / split / f"genesis-{split}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(split_lines) + "\n")
        manifest = prepare_shards(model_dir / "tokenizer.json", text, args.data_out / "shards" / split)
        written[f"{split}Tokens"] = sum(shard["tokens"] for shard in manifest["shards"])
    print(json.dumps(written), flush=True)


if __name__ == "__main__":
    main()
