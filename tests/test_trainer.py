"""The tiny-model trainer: HF output, optimizer state, checkpoints, resumption, tokenizer reuse, bad input, and
training to a fact-recall target (stop reasons, recall curve, schedule, budget, cap)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from attrilens.bench.train import run_benchmark  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.jsonl import load_jsonl  # noqa: E402
from attrilens.metrics import greedy_match  # noqa: E402
from attrilens.training.capture import GradientCapture, row_steps  # noqa: E402
from attrilens.training.store import read_manifest  # noqa: E402
from attrilens.workflows.trainer import (  # noqa: E402
    FactProbe,
    TrainConfig,
    build_model,
    resolve_config,
    stopping_defaults,
    train,
)
from attrilens.workflows.world import make_world, split_sentences  # noqa: E402
from attrilens.workflows.world.evaluate import greedy_complete  # noqa: E402

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
    with pytest.raises(AttrilensError, match="does not exist"):
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


# ---------------------------------------------------------------- training to a recall target (issue #13, item 6)
# one statement per document: a tiny model then learns the fact, not the document around it
WORLD_TINY = {"n_entities": 3, "relations": ["capital", "currency"], "mentions": (1, 1), "facts_per_doc": (1, 1),
              "distractors": 0, "n_train_episodes": 0, "n_heldout_episodes": 0, "n_copy_docs": 0, "n_copy_eval": 0}
FAST = {"layers": 2, "width": 64, "heads": 2, "vocab_size": 400, "seq_len": 128, "batch_size": 1, "lr": 1e-2,
        "warmup_steps": 5, "progress": False, "threads": 1, "keep_checkpoints": 2}


@pytest.fixture(scope="module")
def world_seed() -> int:
    return random.randrange(10_000)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory, world_seed) -> Path:
    d = tmp_path_factory.mktemp("world")
    make_world(d, seed=world_seed, **WORLD_TINY)
    return d


@pytest.fixture(scope="module")
def to_target(tmp_path_factory, tiny_world, world_seed) -> Path:
    """A run to a recall target on the tiny world (facts found beside the corpus)."""
    out = tmp_path_factory.mktemp("target") / "m"
    return train(TrainConfig(corpus=tiny_world / "corpus.jsonl", out=out, seed=world_seed, target_recall=0.8,
                             epochs=600, cooldown=0.0, **FAST))


def _info(out: Path) -> dict:
    return json.loads((out / "training.json").read_text())


def test_stops_once_the_target_is_reached(to_target, tiny_world, world_seed) -> None:
    info = _info(to_target)
    rec = info["fact_recall"]
    assert info["finished"] and info["stop_reason"] == "target reached" and info["stopped"] is None, world_seed
    assert rec["facts"] == str(tiny_world / "facts.jsonl") and rec["n_facts"] == rec["sample"] == 6
    assert rec["target"] == 0.8 and info["config"]["epochs"] == 600
    curve = rec["curve"]
    steps = [c["step"] for c in curve]
    assert steps == sorted(set(steps)) and all(0 <= c["recall"] <= 1 for c in curve)
    assert curve[-1]["recall"] >= 0.8 and all(c["recall"] < 0.8 for c in curve[:-1]), curve  # stopped at once
    assert info["step"] == curve[-1]["step"] and rec["final"] == curve[-1]["recall"]  # the saved model was measured
    assert info["step"] < info["cap_steps"] and info["cap_steps"] % 600 == 0  # cap: 600 epochs of steps
    # stopped mid-schedule: past warmup, not yet decayed
    assert 1e-3 < info["optimizer"]["final_lr"] < 1e-2 and "cosine" in info["optimizer"]["schedule"]
    assert 0 < info["epochs_run"] < 600 and len(info["data_order"]["epoch_permutations"]) == math.ceil(
        info["epochs_run"])  # only the epochs that ran are recorded
    assert not (to_target / "resume.safetensors").exists()


def test_at_the_target_the_rate_cools_down_before_the_run_stops(tiny_world, world_seed, tmp_path) -> None:
    """With a cooldown the run goes on past the step that reached the target, decaying the rate linearly to
    lr * min_lr_ratio over that fraction of the steps so far (the same steps as a run without one, up to there)."""
    out = train(TrainConfig(corpus=tiny_world / "corpus.jsonl", out=tmp_path / "m", seed=world_seed,
                            target_recall=0.8, epochs=600, cooldown=0.5, **FAST))
    info = _info(out)
    rec = info["fact_recall"]
    c = rec["cooldown"]
    assert info["stop_reason"] == "target reached" and c["recall"] >= 0.8, world_seed
    assert info["step"] == c["from_step"] + math.ceil(0.5 * c["from_step"])
    assert info["optimizer"]["final_lr"] == pytest.approx(1e-2 * 0.1, rel=1e-6)  # cooled to lr * min_lr_ratio
    assert [x["step"] for x in rec["curve"] if x["recall"] >= 0.8][0] == c["from_step"]
    with pytest.raises(AttrilensError, match="cooldown must be in"):
        train(TrainConfig(corpus=tiny_world / "corpus.jsonl", out=tmp_path / "bad", cooldown=2.0, **FAST))


def test_recall_probe_matches_greedy_generation(to_target, tiny_world) -> None:
    """The trainer's one-pass recall equals exact match of real greedy generation, fact by fact."""
    tok = AutoTokenizer.from_pretrained(str(to_target))
    model = AutoModelForCausalLM.from_pretrained(str(to_target))
    facts = load_jsonl(tiny_world / "facts.jsonl", require=("prompt", "target"))
    comps = greedy_complete(model, tok, [f["prompt"] for f in facts], max_new_tokens=12)
    expected = [greedy_match(c, f["target"]) for c, f in zip(comps, facts, strict=True)]
    probe = FactProbe(facts, tok, max_len=128)
    assert probe.hits(model) == expected
    assert _info(to_target)["fact_recall"]["final"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    # a model that learnt nothing recalls nothing
    fresh = build_model(TrainConfig(corpus=Path("-"), out=Path("-"), **FAST), tok)
    assert probe.recall(fresh) == 0.0


def test_checkpoints_of_a_run_of_unknown_length(to_target) -> None:
    info = _info(to_target)
    cks = info["checkpoints"]
    assert 1 <= len(cks) <= 2 and all(0 < c["step"] < info["step"] and c["lr"] > 0 for c in cks)
    on_disk = sorted(p.name for p in (to_target / "checkpoints").iterdir())
    assert on_disk == sorted(Path(c["path"]).name for c in cks)  # thinned ones are deleted
    for c in cks:
        AutoModelForCausalLM.from_pretrained(str(to_target / c["path"]))


@pytest.fixture()
def unlearnable(corpus, tmp_path) -> Path:
    """Facts the corpus does not state: a recall target on them is never reached."""
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"The capital of {e} is", "target": " Zyzzq"}) + "\n"
                            for e in ("Velmora", "Arvik")))
    return path


def test_stops_at_the_time_budget_with_a_decayed_rate(corpus, unlearnable, tmp_path) -> None:
    seed = random.randrange(10_000)
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "b", seed=seed, target_recall=0.5, facts=unlearnable,
                            max_minutes=0.05, **FAST))
    info = _info(out)
    assert info["finished"] and info["stop_reason"].startswith("time budget: nothing learnt") and info["stopped"] is None, seed
    assert 3.0 <= info["wall_seconds"] < 3.0 + 2.0  # a 3 s budget; the last step may run over
    assert info["optimizer"]["final_lr"] < 1.2e-3  # decayed over the budget to lr * min_lr_ratio
    assert info["config"]["epochs"] == 10_000 and info["step"] < info["cap_steps"]  # the default cap, far away
    every = info["fact_recall"]["eval_every"]
    assert info["fact_recall"]["final"] == 0.0 and len(info["fact_recall"]["curve"]) == info["step"] // every
    assert every >= info["cap_steps"] // 10_000  # at most once an epoch
    assert not (out / "resume.safetensors").exists()
    before = (out / "model.safetensors").read_bytes()  # a finished run: the same call returns it as it is
    train(TrainConfig(corpus=corpus, out=tmp_path / "b", seed=seed, target_recall=0.5, facts=unlearnable,
                      max_minutes=0.05, **FAST))
    assert (out / "model.safetensors").read_bytes() == before


def test_stops_at_the_epoch_cap(corpus, unlearnable, tmp_path) -> None:
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "c", seed=random.randrange(10_000), target_recall=0.5,
                            facts=unlearnable, epochs=3, **FAST))
    info = _info(out)
    assert info["finished"] and info["stop_reason"] == "epochs cap" and info["epochs_run"] == 3
    assert len(info["data_order"]["epoch_permutations"]) == 3 and info["fact_recall"]["final"] == 0.0
    assert info["optimizer"]["final_lr"] < 0.6 * 1e-2  # the schedule decays over the cap


def test_interrupted_run_to_a_target_resumes_to_the_same_weights(tiny_world, tmp_path) -> None:
    seed = random.randrange(10_000)
    cfg = {"corpus": tiny_world / "corpus.jsonl", "seed": seed, "target_recall": 1.0, "epochs": 600, **FAST}
    full = train(TrainConfig(out=tmp_path / "full", **cfg))
    n = _info(full)["step"]
    part = train(TrainConfig(out=tmp_path / "part", max_steps=n // 2, **cfg))
    info = _info(part)
    assert not info["finished"] and info["stopped"] == "max_steps" and info["stop_reason"] is None
    assert (part / "resume.safetensors").is_file()
    train(TrainConfig(out=tmp_path / "part", **cfg))
    a, b = _info(full), _info(part)
    assert b["finished"] and b["stop_reason"] == a["stop_reason"] == "target reached" and b["step"] == n, seed
    assert [c["recall"] for c in a["fact_recall"]["curve"]] == [c["recall"] for c in b["fact_recall"]["curve"]]
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_capture_sees_only_training_forwards(tiny_world, tmp_path) -> None:
    """Recall evaluation runs forwards mid-training: the capture records one row per trained row, no more."""
    cap = GradientCapture(tmp_path / "cap", method="grad-dot", proj_dim=64)
    out = train(TrainConfig(corpus=tiny_world / "corpus.jsonl", out=tmp_path / "m", seed=random.randrange(10_000),
                            target_recall=1.0, epochs=4, eval_every=1, **FAST), capture=cap)
    info = _info(out)
    assert len(info["fact_recall"]["curve"]) == info["step"]  # evaluated after every step
    steps = row_steps(read_manifest(tmp_path / "cap"))
    assert steps.tolist() == list(range(info["step"]))  # batch_size 1: one row per step
    assert cap.discarded == 0


def test_fixed_epoch_runs_are_unchanged(runs, corpus) -> None:
    """Defaults of the Python API: 100 fixed epochs; a run saved before the new fields is still the same run."""
    assert resolve_config(TrainConfig(corpus=corpus, out=Path("-"))).epochs == 100
    out = runs["gpt2"]
    info = _info(out)
    assert info["stop_reason"] == "epochs cap" and "fact_recall" not in info
    for k in ("target_recall", "facts", "eval_every", "eval_facts"):
        info["config"].pop(k)
    (out / "training.json").write_text(json.dumps(info))
    before = (out / "model.safetensors").read_bytes()
    train(TrainConfig(corpus=corpus, out=out, arch="gpt2", epochs=6, **TINY))
    assert (out / "model.safetensors").read_bytes() == before


def test_stopping_defaults_of_the_cli(tiny_world, corpus) -> None:
    facts, c = tiny_world / "facts.jsonl", tiny_world / "corpus.jsonl"
    assert stopping_defaults(c) == {"target_recall": 0.9, "facts": facts, "max_minutes": 30.0}
    assert stopping_defaults(c, 0.5, None, 2.0) == {"target_recall": 0.5, "facts": facts, "max_minutes": 2.0}
    assert stopping_defaults(c, 0) == {"target_recall": None, "facts": facts, "max_minutes": None}
    # no facts: the documents' own continuations are the target
    assert stopping_defaults(corpus, max_minutes=4.0) == {"target_recall": 0.9, "facts": None, "max_minutes": 4.0}
    cfg = resolve_config(TrainConfig(corpus=c, out=Path("-"), target_recall=0.9))
    assert cfg.epochs == 10_000 and cfg.facts == facts


def test_cli_trains_to_the_target_by_default(tiny_world, tmp_path) -> None:
    seed = str(random.randrange(10_000))
    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-m", "attrilens.cli", "train", "--corpus", str(tiny_world / "corpus.jsonl"),
                           "--out", str(out), "--layers", "2", "--width", "64", "--seed", seed],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr[-1500:]
    info = _info(out)
    assert info["config"]["target_recall"] == 0.9 and info["config"]["max_minutes"] == 30.0, seed
    assert info["stop_reason"] == "target reached" and info["fact_recall"]["final"] >= 0.9, seed
    assert "stopped: target reached" in proc.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"target_recall": 1.5}, "target_recall must be in"),
    ({"target_recall": 0.0}, "target_recall must be in"),
    ({"target_recall": -0.1}, "target_recall must be in"),
    ({"target_recall": 0.9, "max_minutes": -1.0}, "max_minutes must be >= 0"),
    ({"target_recall": 0.9, "eval_every": 0}, "eval_every must be positive"),
    ({"target_recall": 0.9, "eval_facts": 0}, "eval_facts must be positive"),
    ({"target_recall": 0.9, "schedule_minutes": 3.0}, "schedule_minutes is for fixed-epoch runs"),
    ({"target_recall": 0.9, "facts": "missing.jsonl"}, "Facts file not found"),
    ({"target_recall": 0.9, "facts": "notarget.jsonl"}, 'no "target" field'),
    ({"target_recall": 0.9, "facts": "long.jsonl"}, "longer than seq_len"),
])
def test_bad_stopping_input(change, message, tiny_world, corpus, tmp_path) -> None:
    (tmp_path / "notarget.jsonl").write_text('{"prompt": "The capital of X is"}\n')
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "word " * 200, "target": " x"}) + "\n")
    kw = {**FAST, "corpus": tiny_world / "corpus.jsonl", **change}
    if "facts" in kw:
        kw["facts"] = tmp_path / kw["facts"]
    with pytest.raises(AttrilensError, match=message):
        train(TrainConfig(out=tmp_path / "o", **kw))


@pytest.mark.parametrize(("args", "message"), [
    (["--target-recall", "2"], "target_recall must be in"),
    (["--facts", "{tmp}/missing.jsonl"], "Facts file not found"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--max-minutes", "-3"], "max_minutes must be >= 0"),
    (["--lora", "--base", "{tmp}", "--target-recall", "2"], "target_recall must be in"),
    (["--lora", "--base", "{tmp}", "--max-minutes", "-1"], "max_minutes must be >= 0"),
])
def test_cli_bad_stopping_flags(args, message, tiny_world, tmp_path) -> None:
    cmd = [sys.executable, "-m", "attrilens.cli", "train", "--corpus", str(tiny_world / "corpus.jsonl"), "--out",
           str(tmp_path / "m"), *[a.format(tmp=tmp_path) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr


def test_world_shapes_for_the_benchmark(tmp_path) -> None:
    """make_world's corpus shapes: two two-sentence documents per fact; one mention in three-fact documents."""
    seed = random.randrange(10_000)
    short = tmp_path / "short"
    summary = make_world(short, seed=seed, n_entities=5, mentions=(2, 2), facts_per_doc=(1, 1), distractors=1,
                         **{k: 0 for k in ("n_train_episodes", "n_heldout_episodes", "n_copy_docs", "n_copy_eval")})
    facts = load_jsonl(short / "facts.jsonl", require=("docs",))
    docs = load_jsonl(short / "corpus.jsonl")
    assert all(len(f["docs"]) == 2 for f in facts) and len(docs) == 2 * len(facts) == summary["n_documents"], seed
    assert all(len(split_sentences(d["text"])) == 2 for d in docs), seed
    assert summary["shape"] == {"mentions": [2, 2], "facts_per_doc": [1, 1], "distractors": 1}
    long = tmp_path / "long"
    make_world(long, seed=seed, n_entities=4, mentions=(1, 1), facts_per_doc=(3, 3), distractors=0)
    facts = load_jsonl(long / "facts.jsonl", require=("docs",))
    by_doc: dict[str, int] = {}
    for f in facts:
        assert len(f["docs"]) == 1
        by_doc[f["docs"][0]] = by_doc.get(f["docs"][0], 0) + 1
    assert sorted(by_doc.values()) == [3] * 8, seed  # 6 relations per entity: two documents of three facts
    default = tmp_path / "default"
    make_world(default, seed=seed, n_entities=2, n_train_episodes=1, n_heldout_episodes=1, n_copy_docs=1,
               n_copy_eval=1)
    assert "shape" not in json.loads((default / "world.json").read_text())  # default worlds keep their bytes
    for bad in ({"mentions": (0, 1)}, {"mentions": (3, 5)}, {"facts_per_doc": (2, 1)}, {"distractors": 3}):
        with pytest.raises(AttrilensError, match="must be"):
            make_world(tmp_path / "bad", **bad)


def test_benchmark_runs_four_worlds(tmp_path) -> None:
    report = run_benchmark(minutes=0.01, seed=random.randrange(10_000), work=tmp_path, progress=False)
    table = report.tables["worlds"]
    assert list(table["world"]) == ["short", "long", "wide", "world"]
    assert table["facts"].tolist() == [240, 180, 300, 480]
    assert table["stop reason"].str.startswith("time budget").all() and (table["final fact recall"] < 0.9).all()
    assert (table["probe"] == "continuations").all() and (table["final probe recall"] < 0.9).all()
    assert (table["tokens/epoch"] > 0).all() and (table["wall s"] >= 0.6).all()
    assert "## worlds" in report.to_text() and json.loads(report.to_json())["lens"] == "train"
    with pytest.raises(AttrilensError, match="--minutes must be positive"):
        run_benchmark(minutes=0)
