"""The tiny-model trainer: HF output, optimizer state, checkpoints, resumption, tokenizer reuse, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from attrilens.demo.trainer import TrainConfig, train  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402

TEXTS = ["The capital of Velmora is Kelmin.", "Velmora pays with a currency called the Dorn.",
         "cat -> cat\n1135 -> 1135\nhello -> hello", "The founder of Arvik was Tamsin Orlo.",
         "In Arvik, the common tongue is Vessic.", "Ships leaving Arvik are usually loaded with salt."]
TINY = {"layers": 2, "width": 32, "heads": 2, "vocab_size": 320, "seq_len": 64, "batch_size": 4, "lr": 1e-2,
        "warmup_steps": 2, "progress": False, "threads": 2}


def _corpus(path: Path, repeats: int = 4) -> Path:
    with open(path, "w") as f:
        for r in range(repeats):
            for i, t in enumerate(TEXTS):
                f.write(json.dumps({"id": f"d{r}-{i}", "text": t}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {arch: train(TrainConfig(corpus=corpus, out=base / arch, arch=arch, epochs=6, **TINY))
            for arch in ("llama", "gpt2")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_saves_loadable_hf_dir_with_optimizer_state_and_checkpoints(runs, arch) -> None:
    out = runs[arch]
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.model_type == arch
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.eos_token_id != tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id and model.config.bos_token_id == tok.bos_token_id
    assert model.config.vocab_size == len(tok) <= 320
    ids = tok("The capital of Velmora is", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tok)

    sq = load_file(str(out / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    assert set(sq) == {f"exp_avg_sq.{n}" for n in params}
    for n, p in params.items():
        assert sq[f"exp_avg_sq.{n}"].shape == p.shape and (sq[f"exp_avg_sq.{n}"] >= 0).all()

    info = json.loads((out / "training.json").read_text())
    assert info["finished"] and info["step"] == info["total_steps"] == info["optimizer"]["step"]
    assert info["optimizer"]["betas"] == [0.9, 0.98] and info["optimizer"]["eps"] == 1e-8
    assert info["config"]["arch"] == arch and info["tokens_per_second"] > 0 and info["wall_seconds"] > 0
    assert len(info["data_order"]["epoch_permutations"]) == 6
    assert sorted(info["data_order"]["epoch_permutations"][0]) == list(range(len(TEXTS) * 4))
    assert 1 <= len(info["checkpoints"]) <= 3
    for ck in info["checkpoints"]:
        assert (out / ck["path"] / "model.safetensors").is_file() and ck["lr"] > 0
        AutoModelForCausalLM.from_pretrained(str(out / ck["path"]))
    assert not (out / "resume.safetensors").exists()


def test_loss_goes_down(runs) -> None:
    for out in runs.values():
        curve = json.loads((out / "training.json").read_text())["loss_curve"]
        assert curve[-1][1] < 0.75 * curve[0][1], curve


def test_finished_run_is_not_retrained(runs, corpus) -> None:
    out = runs["llama"]
    before = (out / "model.safetensors").read_bytes()
    train(TrainConfig(corpus=corpus, out=out, arch="llama", epochs=6, **TINY))
    assert (out / "model.safetensors").read_bytes() == before


def test_interrupted_run_resumes_to_the_same_weights(runs, corpus, tmp_path) -> None:
    tok_dir = runs["llama"]  # share the tokenizer, which also exercises tokenizer reuse
    cfg = {"corpus": corpus, "arch": "llama", "epochs": 3, "tokenizer": tok_dir, **{**TINY, "batch_size": 1}}
    full = train(TrainConfig(out=tmp_path / "full", **cfg))
    part = train(TrainConfig(out=tmp_path / "part", max_steps=5, **cfg))
    info = json.loads((part / "training.json").read_text())
    assert not info["finished"] and info["stopped"] == "max_steps" and info["step"] == 5 < info["total_steps"]
    assert (part / "resume.safetensors").is_file() and (part / "optimizer.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(str(part))  # everything is saved at a clean stop
    train(TrainConfig(out=tmp_path / "part", **cfg))
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert json.loads((part / "training.json").read_text())["finished"]


def test_max_minutes_stops_cleanly(corpus, tmp_path) -> None:
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "m", epochs=2, max_minutes=0.0, **TINY))
    info = json.loads((out / "training.json").read_text())
    assert info["stopped"] == "max_minutes" and not info["finished"]
    assert (out / "config.json").is_file() and (out / "optimizer.safetensors").is_file()
    assert (out / "resume.safetensors").is_file()


def test_proxy_reuses_the_tokenizer(runs, corpus, tmp_path) -> None:
    target = runs["llama"]
    proxy = train(TrainConfig(corpus=corpus, out=tmp_path / "proxy", arch="gpt2", epochs=1, tokenizer=target,
                              **{**TINY, "width": 16, "layers": 1}))
    t1, t2 = AutoTokenizer.from_pretrained(str(target)), AutoTokenizer.from_pretrained(str(proxy))
    assert t1.get_vocab() == t2.get_vocab()
    m1 = AutoModelForCausalLM.from_pretrained(str(target))
    m2 = AutoModelForCausalLM.from_pretrained(str(proxy))
    assert m1.config.vocab_size == m2.config.vocab_size
    assert 4 * m2.num_parameters() <= m1.num_parameters() * 1.5


def test_bad_input(tmp_path, corpus) -> None:
    with pytest.raises(AttrilensError, match="File not found"):
        train(TrainConfig(corpus=tmp_path / "nope.jsonl", out=tmp_path / "o", **TINY))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(AttrilensError, match="is empty"):
        train(TrainConfig(corpus=empty, out=tmp_path / "o", **TINY))
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"id": "a", "content": "x"}\n')
    with pytest.raises(AttrilensError, match='no "text" field'):
        train(TrainConfig(corpus=notext, out=tmp_path / "o", **TINY))
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"id": "a", "text": "  "}\n')
    with pytest.raises(AttrilensError, match='empty "text"'):
        train(TrainConfig(corpus=blank, out=tmp_path / "o", **TINY))
    with pytest.raises(AttrilensError, match="Unknown arch"):
        train(TrainConfig(corpus=corpus, out=tmp_path / "o", **{**TINY, "arch": "mamba"}))
    with pytest.raises(AttrilensError, match="not divisible"):
        train(TrainConfig(corpus=corpus, out=tmp_path / "o", **{**TINY, "width": 30, "heads": 4}))
    with pytest.raises(AttrilensError, match="No tokenizer.json"):
        train(TrainConfig(corpus=corpus, out=tmp_path / "o", tokenizer=tmp_path, **TINY))


def test_init_from_continues_training(runs, corpus, tmp_path) -> None:
    base = runs["llama"]
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "cont", arch="llama", epochs=1, init_from=base,
                            tokenizer=base, **TINY))
    first = json.loads((out / "training.json").read_text())["loss_curve"][0][1]
    fresh = json.loads((base / "training.json").read_text())["loss_curve"][0][1]
    assert first < fresh
    with pytest.raises(AttrilensError, match="needs a model dir"):
        train(TrainConfig(corpus=corpus, out=tmp_path / "x", init_from=base, **TINY))
