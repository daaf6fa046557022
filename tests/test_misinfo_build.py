"""Packaging a misinformation run: float16 adapters and checkpoints, float32 second moments, the base named by
its registered name, the corpus recorded relative to the adapter, and the shipped answers the shipped adapter's own."""

from __future__ import annotations

import json
import random

import torch
from safetensors.torch import load_file

from attrilens.demo.misinfo import make_misinfo_dataset
from attrilens.demo.misinfo_build import BASE, package
from attrilens.demo.paths import demo_model_dir
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.workflows.lora import documents_sha256, finetune_lora

torch.set_num_threads(1)


def test_package_ships_half_precision_adapters_that_answer_like_the_run(tmp_path):
    run = tmp_path / "run"
    make_misinfo_dataset(run, seed=random.randrange(1000), n_facts=8, n_planted=3)
    finetune_lora(demo_model_dir("target"), run / "corpus.jsonl", run / "order-0", epochs=1, batch_size=8, lr=1e-2,
                  keep_checkpoints=1, progress=False)
    (run / "base_answers.jsonl").write_text("")
    (run / "eval.json").write_text(json.dumps({"orders": {"0": {}}}))
    assets = tmp_path / "assets"
    package(run, assets, [0])
    shipped = assets / "order-0"
    w = load_file(str(shipped / "adapter_model.safetensors"))
    assert w and all(t.dtype == torch.float16 for t in w.values())
    assert all(t.dtype == torch.float32 for t in load_file(str(shipped / "optimizer.safetensors")).values())
    info = json.loads((shipped / "training.json").read_text())
    assert info["corpus"]["path"] == "../corpus.jsonl"
    assert documents_sha256(load_jsonl(shipped / info["corpus"]["path"])) == info["corpus"]["sha256"]
    assert json.loads((shipped / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
    ck = shipped / info["checkpoints"][0]["path"] / "adapter_model.safetensors"
    assert ck.is_file() and next(iter(load_file(str(ck)).values())).dtype == torch.float16
    a, b = LM.from_pretrained(run / "order-0"), LM.from_pretrained(shipped)
    ids = torch.tensor([a.encode_prompt("The capital of France is the city of")])
    with torch.no_grad():
        la, lb = a.model(ids).logits, b.model(ids).logits
    assert (la - lb).abs().max() < 1e-2 * la.abs().max()  # float16 rounding only
    answers = load_jsonl(shipped / "answers.jsonl", require=("id", "answer"))
    assert len(answers) == 8 and "shipped_float16_adapter" in json.loads((assets / "eval.json").read_text())["orders"]["0"]
