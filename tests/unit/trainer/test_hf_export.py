"""Exporting to a Hugging Face directory: transformers' LlamaForCausalLM.from_pretrained loads it and computes our
logits (fp32, <= 1e-4) and our greedy continuation; single file or shards + index; tied embeddings; the
tokenizer; from a live parallel model (torchrun, gloo/CPU) and offline from a DCP checkpoint with the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hf_runs import LOGITS_ATOL, TINY_ARGS, TOKENS, checkpoint_model, hf_logits, run_scenario, tiny_hf_model
from llmtrain_trainer.config import ConfigError
from llmtrain_trainer.hf_checkpoint import (
    INDEX_FILE,
    MODEL_ARGS_FILE,
    SINGLE_FILE,
    load_hf_model_args,
    load_hf_weights,
    save_hf_model,
)
from llmtrain_trainer.model import ModelArgs, Transformer
from trainer_runs import BASE_CONFIG, REPO, merged, run_trainer

transformers = pytest.importorskip("transformers")


def our_model(args: ModelArgs, seed: int = 0) -> Transformer:
    """Our init, spread a little (std 0.02 weights give near-zero logits, where any error would hide)."""
    model = Transformer(args)
    model.init_weights(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def ours(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(tokens))


def load(path, **kwargs):
    return transformers.LlamaForCausalLM.from_pretrained(path, **kwargs).eval()


def greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(ours(model, [tokens])[0, -1].argmax()))
    return tokens


@pytest.fixture(scope="module")
def tiny_args() -> ModelArgs:
    return ModelArgs(**TINY_ARGS)


def test_export_loads_in_transformers_with_our_logits_and_generates(tiny_args, tmp_path):
    model = our_model(tiny_args)
    save_hf_model(model, tmp_path, dtype=torch.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", SINGLE_FILE]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    hf = load(tmp_path)
    assert (hf_logits(hf) - ours(model)).abs().max().item() <= LOGITS_ATOL
    prompt = TOKENS[0][:4]
    generated = hf.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False)
    assert generated[0].tolist() == greedy(model, prompt, 5)


def test_sharded_export_loads(tiny_args, tmp_path):
    model = our_model(tiny_args)
    save_hf_model(model, tmp_path, dtype=torch.float32)  # first a single file, then shards over it
    save_hf_model(model, tmp_path, dtype=torch.float32, max_shard_bytes=30_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (tmp_path / SINGLE_FILE).exists()
    assert (hf_logits(load(tmp_path)) - ours(model)).abs().max().item() <= LOGITS_ATOL
    # and our import reads the shards back
    back = Transformer(load_hf_model_args(tmp_path))
    load_hf_weights(back, tmp_path)
    assert torch.equal(ours(back), ours(model))
    # and back to a single file: no shard of the earlier export is left behind
    save_hf_model(model, tmp_path, dtype=torch.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", SINGLE_FILE]


def test_tied_embeddings_round_trip(tiny_args, tmp_path):
    model = our_model(replace(tiny_args, tie_embeddings=True))
    save_hf_model(model, tmp_path, dtype=torch.float32)
    from safetensors import safe_open

    with safe_open(str(tmp_path / SINGLE_FILE), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    hf = load(tmp_path)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert (hf_logits(hf) - ours(model)).abs().max().item() <= LOGITS_ATOL
    back = Transformer(load_hf_model_args(tmp_path))
    load_hf_weights(back, tmp_path)
    assert back.output.weight is back.tok_embeddings.weight
    assert torch.equal(ours(back), ours(model))


def test_import_then_export_gives_back_the_same_tensors(tmp_path):
    from safetensors.torch import load_file

    tiny_hf_model(tmp_path / "hf")
    model = Transformer(load_hf_model_args(tmp_path / "hf"))
    load_hf_weights(model, tmp_path / "hf")
    save_hf_model(model, tmp_path / "out", dtype=torch.float32)
    before, after = load_file(tmp_path / "hf" / SINGLE_FILE), load_file(tmp_path / "out" / SINGLE_FILE)
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_export_is_bf16_and_close(tiny_args, tmp_path):
    model = our_model(tiny_args)
    save_hf_model(model, tmp_path)  # default dtype: bf16
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = load(tmp_path, dtype=torch.float32)
    assert (hf_logits(hf) - ours(model)).abs().max().item() < 0.1


def test_the_tokenizer_is_copied_and_names_bos_and_eos(tiny_args, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(20)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    src = tmp_path / "tok"
    src.mkdir()
    tok.save(str(src / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **specials}))
    save_hf_model(our_model(tiny_args), tmp_path / "out", dtype=torch.float32, tokenizer=src)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded("w3 w4")["input_ids"][-2:] == [6, 7]
    with pytest.raises(ConfigError, match=r"tokenizer: .* does not exist"):
        save_hf_model(our_model(tiny_args), tmp_path / "again", tokenizer=tmp_path / "nowhere")


@pytest.mark.parametrize("layout", ["fsdp2", "tp2", "ddp"])
def test_a_live_parallel_model_exports_what_it_computes(tmp_path, layout):
    """Every rank gathers one parameter at a time; rank 0 writes (max_shard_bytes small: shards too). DDP: the
    wrapper's `module.` prefix is dropped."""
    out = tmp_path / "export"
    result = run_scenario("export", layout, tmp_path, args=TINY_ARGS, export=str(out), max_shard_bytes=50_000)
    assert (out / INDEX_FILE).is_file()
    assert (hf_logits(load(out)) - result["logits"]).abs().max().item() <= LOGITS_ATOL


# --------------------------------------------------------------------------------------- offline CLI export

CLI_STEPS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-process run of the trainer (the tiny preset, GQA) that checkpoints at its last step."""
    workdir = tmp_path_factory.mktemp("trained")
    config = merged(
        BASE_CONFIG,
        {
            "training": {"steps": CLI_STEPS},
            "schedule": {"warmupSteps": 0},
            "checkpoint": {"dir": str(workdir / "checkpoints"), "interval": CLI_STEPS, "asyncSave": False},
        },
    )
    run = run_trainer(config, workdir)
    assert run.returncode == 0, run.explain()
    return workdir, workdir / "checkpoints" / f"step-{CLI_STEPS:08d}"


def export_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "trainer_image"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "llmtrain_trainer", "export", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_checkpoints_describe_their_model(trained):
    _, step = trained
    args = json.loads((step / MODEL_ARGS_FILE).read_text())
    assert (args["dim"], args["n_heads"], args["n_kv_heads"], args["vocab_size"]) == (64, 4, 2, 512)


def test_cli_exports_a_checkpoint_transformers_loads(trained, tmp_path):
    _, step = trained
    proc = export_cli("--checkpoint", step, "--out", tmp_path / "hf", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["event"] == "exported"
    tokens = [[t * 3 % 512 for t in row] for row in TOKENS]
    expected = ours(checkpoint_model(step), tokens)
    assert (hf_logits(load(tmp_path / "hf"), tokens) - expected).abs().max().item() <= LOGITS_ATOL


def test_cli_reads_the_model_from_the_trainer_config_when_the_step_does_not_say(trained, tmp_path):
    workdir, step = trained
    copy = tmp_path / step.name
    shutil.copytree(step, copy)
    (copy / MODEL_ARGS_FILE).unlink()
    proc = export_cli("--checkpoint", copy, "--out", tmp_path / "hf")
    assert proc.returncode == 78 and "--config: required" in proc.stderr
    proc = export_cli("--checkpoint", copy, "--out", tmp_path / "hf", "--config", workdir / "config.json")
    assert proc.returncode == 0, proc.stderr
    expected = ours(checkpoint_model(step))
    hf = load(tmp_path / "hf", dtype=torch.float32)  # bf16 by default
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (hf_logits(hf) - expected).abs().max().item() < 0.1

    wrong = merged(json.loads((workdir / "config.json").read_text()), {"model": {"kvHeads": 4}})
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    proc = export_cli("--checkpoint", copy, "--out", tmp_path / "hf2", "--config", tmp_path / "wrong.json")
    assert proc.returncode == 78 and "layers.0.attention.wk.weight: (32, 64) in the checkpoint" in proc.stderr


def test_cli_refuses_what_is_not_a_checkpoint(tmp_path):
    proc = export_cli("--checkpoint", tmp_path, "--out", tmp_path / "hf")
    assert proc.returncode == 78 and "not a DCP checkpoint directory" in proc.stderr


def test_the_training_cli_is_unchanged(tmp_path, monkeypatch):
    """`python -m llmtrain_trainer --config` still parses as before (a missing file is a config error, 78)."""
    from llmtrain_trainer.__main__ import main

    monkeypatch.setenv("LLMTRAIN_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert main(["--config", str(tmp_path / "missing.json")]) == 78
    assert "config file not found" in (tmp_path / "termination-log").read_text()
