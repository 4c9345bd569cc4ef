"""A job that starts from a Hugging Face Llama (model.init) and hands its model out (checkpoint.export): real
trainer runs, 2 processes under torchrun (FSDP zero3, gloo/CPU, fp32).

- step 1's logged loss is the HF model's loss on the same global batch (<= 1e-4): training starts from its weights;
- the exported directory loads with transformers and computes our final checkpoint's logits (<= 1e-4), with the
  data.tokenizer files beside it; rank 0's termination record names it;
- a second run on the same checkpoint directory resumes from our checkpoint and never re-imports the HF weights;
- the offline export CLI reads a model.init run's shape from its config when the checkpoint does not say;
- a model.init that is not there is a config error naming model.init (exit 78), before any model is built.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from hf_runs import LOGITS_ATOL, TOKENS, VOCAB, checkpoint_model, hf_logits, tiny_hf_model
from trainer_runs import BASE_CONFIG, GLOBAL_BATCH, SEQ_LEN, merged, run_trainer

transformers = pytest.importorskip("transformers")

STEPS = 4
LOSS_ATOL = 1e-4  # measured ~3e-7


def hf_tokenizer(directory):
    """A small HF tokenizer directory (tokenizer.json + tokenizer_config.json), as a model repository holds one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": 3 + i for i in range(20)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(directory / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory / "tokenizer.json"


def job_config(init, checkpoints, tokenizer) -> dict:
    config = merged(
        BASE_CONFIG,
        {
            "data": {"tokenizer": f"hf:{tokenizer}"},  # synthetic data: the tokenizer only travels with the export
            "parallelism": {"dataParallel": "fsdp", "sharding": "zero3"},
            "training": {"steps": STEPS},
            "checkpoint": {"dir": str(checkpoints), "interval": 2, "asyncSave": False, "export": "huggingface"},
        },
    )
    config["model"] = {"init": str(init)}  # the shape is the HF config's: no preset, no dimensions
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The first run (imports, trains, exports), a copy of its export, then the same job run again."""
    root = tmp_path_factory.mktemp("hf-job")
    hf_model = tiny_hf_model(root / "hf-init")
    config = job_config(root / "hf-init", root / "checkpoints", hf_tokenizer(root / "tok"))
    first = run_trainer(config, root / "first", nproc=2)
    assert first.returncode == 0, first.explain()
    shutil.copytree(root / "checkpoints" / "huggingface", root / "first-export")
    again = run_trainer(config, root / "again", nproc=2)
    assert again.returncode == 0, again.explain()
    return {"hf": hf_model, "root": root, "first": first, "again": again}


def first_global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1's global batch, exactly as the trainer's sampler draws it (all data-parallel ranks' rows)."""
    from llmtrain_trainer.config import DataConfig
    from llmtrain_trainer.data import BatchSampler, load_tokens

    seed = 0  # training.seed's default
    tokens = load_tokens(DataConfig(seqLen=SEQ_LEN), vocab_size=VOCAB, seed=seed)
    inputs, targets = BatchSampler(tokens, SEQ_LEN, GLOBAL_BATCH, dp_rank=0, dp_size=1, seed=seed).next_batch()
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def test_training_starts_from_the_hugging_face_weights(runs):
    first = runs["first"]
    assert [e["path"] for e in first.of("imported")] == [str(runs["root"] / "hf-init")]
    assert first.of("checkpoint_loaded") == []
    inputs, targets = first_global_batch()
    with torch.no_grad():
        logits = runs["hf"](inputs).logits
    hf_loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).item()
    assert first.losses[1] == pytest.approx(hf_loss, abs=LOSS_ATOL)
    assert sorted(first.losses) == list(range(1, STEPS + 1))
    assert first.losses[STEPS] < first.losses[1]  # and it trains


def test_the_export_loads_in_transformers_and_computes_the_final_checkpoints_logits(runs):
    root = runs["root"]
    exported = transformers.LlamaForCausalLM.from_pretrained(root / "first-export").eval()
    final = checkpoint_model(root / "checkpoints" / f"step-{STEPS:08d}")
    with torch.no_grad():
        ours = final(torch.tensor(TOKENS))
    assert (hf_logits(exported) - ours).abs().max().item() <= LOGITS_ATOL
    assert (hf_logits(exported) - hf_logits(runs["hf"])).abs().max().item() > 10 * LOGITS_ATOL  # it was trained
    config = json.loads((root / "first-export" / "config.json").read_text())
    assert config["torch_dtype"] == "float32"  # an fp32 run exports fp32
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "first-export")
    assert tokenizer("w3 w4")["input_ids"][-2:] == [6, 7]


def test_rank_0_names_the_export_in_its_termination_record(runs):
    first = runs["first"]
    record = first.termination_message
    assert record["exitCode"] == 0 and record["step"] == STEPS
    assert record["export"] == str(runs["root"] / "checkpoints" / "huggingface")
    assert [e["path"] for e in first.of("exported")] == [record["export"]]


def test_a_second_run_resumes_from_our_checkpoint_not_the_hugging_face_weights(runs):
    from safetensors.torch import load_file

    again, root = runs["again"], runs["root"]
    assert again.of("imported") == []
    assert [e["checkpoint_step"] for e in again.of("checkpoint_loaded")] == [STEPS]
    assert again.losses == {}  # nothing left to train: it exports the same final model again
    before = load_file(root / "first-export" / "model.safetensors")
    after = load_file(root / "checkpoints" / "huggingface" / "model.safetensors")
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert again.termination_message["export"] == str(root / "checkpoints" / "huggingface")


def test_a_missing_init_directory_is_a_config_error_naming_model_init(tmp_path):
    config = job_config(tmp_path / "nowhere", tmp_path / "checkpoints", tmp_path / "tok.json")
    run = run_trainer(config, tmp_path / "run")
    assert run.returncode == 78, run.explain()
    record = run.termination_message
    assert record["reason"] == "InvalidConfig"
    assert record["message"].startswith(f"invalid config: model.init: {tmp_path / 'nowhere'} is not a directory")


def test_the_offline_export_takes_the_shape_from_model_init_when_the_checkpoint_does_not_say(runs, tmp_path):
    from llmtrain_trainer.export import export_checkpoint
    from llmtrain_trainer.hf_checkpoint import MODEL_ARGS_FILE

    root = runs["root"]
    step = tmp_path / f"step-{STEPS:08d}"
    shutil.copytree(root / "checkpoints" / step.name, step)
    (step / MODEL_ARGS_FILE).unlink()
    export_checkpoint(step, tmp_path / "hf", config=root / "first" / "config.json", dtype=torch.float32)
    offline = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    live = transformers.LlamaForCausalLM.from_pretrained(root / "first-export").eval()
    assert (hf_logits(offline) - hf_logits(live)).abs().max().item() <= LOGITS_ATOL
