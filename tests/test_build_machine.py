"""The one build machine of the index: the typed `Manifest` reads and writes manifest.json key for key, every
writer (local build, train-time capture) leaves a manifest that parses with its stage DONE, a build killed in any
phase resumes at that phase, and the machine follows what a method declares, never its name."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.testing import CONTEXT_WORDS, tiny_lm  # noqa: E402
from attrilens.training import build as build_mod  # noqa: E402
from attrilens.training.build import IndexBuild  # noqa: E402
from attrilens.training.capture import GradientCapture, capture_methods  # noqa: E402
from attrilens.training.index import TrainingIndex, build_index  # noqa: E402
from attrilens.training.manifest import Manifest, Stage  # noqa: E402
from attrilens.training.methods import TDA_METHODS  # noqa: E402
from attrilens.training.methods.grad import GradDot  # noqa: E402
from attrilens.training.store import MANIFEST, read_manifest  # noqa: E402


def _docs(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"d{i}", "text": " ".join(rng.choice(CONTEXT_WORDS) for _ in range(rng.randint(5, 14))) + "."}
            for i in range(n)]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return tiny_lm("llama", seed=7)


def test_manifest_round_trips_every_key_and_types_the_stage():
    rng = random.Random(3)
    data = {"schema": "attrilens/training-index/v3", "method": "trackstar", "options": {"proj_dim": rng.randint(8, 99)},
            "dtype": "float16", "shard_size": rng.randint(1, 50), "model": {"fingerprint": "ab", "name": "m"},
            "corpus": {"fingerprint": "cd", "n_blocks": 7}, "eval_queries": {"n": 0}, "model_dir": None,
            "chat_template": True, "stage": "finish", "shards": [{"file": "shards/a.npy", "start": 0}],
            "raw_shards": [], "complete": False, "dim": rng.randint(8, 99), "lambda": rng.random(),
            "second_moments": {"source": "estimate"}}
    m = Manifest.from_dict(json.loads(json.dumps(data)))
    assert m.stage is Stage.FINISH and m.facts == {"dim": data["dim"], "lambda": data["lambda"],
                                                   "second_moments": {"source": "estimate"}}
    assert m.to_dict() == data
    assert json.loads(json.dumps(m.to_dict()))["stage"] == "finish"
    assert set(m.identity()) == {"schema", "method", "options", "dtype", "model", "corpus", "eval_queries",
                                 "shard_size"}
    with pytest.raises(ValueError):
        Manifest.from_dict({**data, "stage": "half-baked"})


def test_local_build_and_capture_leave_a_manifest_of_the_machine(tmp_path, lm):
    docs = _docs(5, 10)
    idx = build_index(lm, docs, tmp_path / "built", method="trackstar", proj_dim=32, block_len=16, shard_size=4,
                      progress=False, moment_sample=8)
    built = Manifest.from_dict(read_manifest(tmp_path / "built"))
    assert built.stage is Stage.DONE and built.complete and built.raw_shards == []
    assert built.facts["prepared"] and "preconditioner" in built.facts and "lambda" in built.facts
    assert not (tmp_path / "built" / "raw").exists()  # raw features gone once finished
    assert len(idx) == built.corpus["n_blocks"]

    model = tiny_lm("llama", seed=11).model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cap = GradientCapture(tmp_path / "cap", method="trackstar", proj_dim=32, shard_size=3)
    cap.attach(model, lm.tokenizer, block_len=24, optimizer=opt)
    rng = torch.Generator().manual_seed(2)
    for step in range(3):
        cap.begin_step(step, 1e-3)
        ids = torch.randint(3, lm.tokenizer.vocab_size, (2, 12), generator=rng)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    cap.close()
    captured = Manifest.from_dict(read_manifest(tmp_path / "cap"))
    assert captured.stage is Stage.DONE and captured.complete and captured.corpus["n_blocks"] == 6
    assert captured.facts["second_moments"]["source"] == "optimizer"  # the method's own record of its moments
    assert all("finished-" in s["file"] for s in captured.shards)  # R applied: the raw rows were replaced
    assert not list((tmp_path / "cap" / "shards").glob("shard-*.npy"))


@pytest.mark.parametrize("phase", ["raw", "fit", "finish"])
def test_a_build_killed_in_any_phase_resumes_there_and_matches_an_unbroken_one(tmp_path, lm, monkeypatch, phase):
    docs = _docs(9, 12)
    kw = {"method": "trackstar", "proj_dim": 24, "block_len": 16, "shard_size": 4, "progress": False,
          "moment_sample": 8}
    whole = build_index(lm, docs, tmp_path / "whole", **kw)
    runner = build_mod.LocalRunner
    real = getattr(runner, phase)
    calls = {"n": 0}

    def dies(self, build, *a):
        calls["n"] += 1
        if calls["n"] == 1:
            if phase == "raw":  # after one raw shard is on disk
                real(self, build, *a)
                build.manifest.raw_shards[1:] = []
                build.save()
            raise KeyboardInterrupt
        return real(self, build, *a)

    monkeypatch.setattr(runner, phase, dies)
    with pytest.raises(KeyboardInterrupt):
        build_index(lm, docs, tmp_path / "broken", **kw)
    stage = json.loads((tmp_path / "broken" / MANIFEST).read_text())["stage"]
    assert stage == {"raw": "features", "fit": "features", "finish": "finish"}[phase]
    again = build_index(lm, docs, tmp_path / "broken", **kw)
    assert calls["n"] == 2
    q = _docs(1, 1)[0]["text"]
    assert torch.allclose(torch.from_numpy(_scores(again, lm, q)), torch.from_numpy(_scores(whole, lm, q)), atol=1e-3)


def _scores(index: TrainingIndex, lm, text: str):
    from attrilens.training.gradients import Example

    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return index.scores(Example.block(ids))


def test_the_machine_follows_declared_capabilities_not_names(tmp_path, lm):
    assert set(capture_methods()) == {"grad-dot", "grad-cos", "trackstar"}
    with pytest.raises(AttrilensError, match="tracin_scores"):  # the method's own reason, by its flag
        GradientCapture(tmp_path / "x", method="tracin")

    calls = []

    @TDA_METHODS.register("grad-dot-probe")
    class Probe(GradDot):
        """grad-dot under another name, capturable, fitting nothing but asking for after_build."""

        fits_after_build = True

        def after_build(self, shards):
            calls.append(sum(a.shape[0] for _, a in shards))
            return False

    try:
        assert "grad-dot-probe" in capture_methods()  # inherited: capturable is declared, not a list of names
        build_index(lm, _docs(4, 6), tmp_path / "probe", method="grad-dot-probe", proj_dim=16, block_len=16,
                    progress=False)
        assert calls and calls[0] == Manifest.from_dict(read_manifest(tmp_path / "probe")).corpus["n_blocks"]
        GradientCapture(tmp_path / "cap", method="grad-dot-probe", proj_dim=16)  # accepted by its flag
    finally:
        TDA_METHODS.unregister("grad-dot-probe")


def test_complete_records_the_state_file_and_the_switch(tmp_path, lm):
    docs = _docs(2, 5)
    build_index(lm, docs, tmp_path / "i", method="grad-dot", proj_dim=16, block_len=16, progress=False)
    raw = json.loads((tmp_path / "i" / MANIFEST).read_text())
    raw.update(stage="finished", complete=False)
    (tmp_path / "i" / MANIFEST).write_text(json.dumps(raw))
    cls = TDA_METHODS.get("grad-dot")
    m = cls(cls.make_options(**raw["options"]), lm)
    IndexBuild(tmp_path / "i", m, Manifest.from_dict(raw), progress=False).complete(build_seconds=1.0)
    done = read_manifest(tmp_path / "i")
    assert done["stage"] == "done" and done["complete"] and done["build_seconds"] == 1.0
    assert "preconditioner" not in done  # grad-dot has no fitted state
