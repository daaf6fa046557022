"""Gradients captured during training: captured rows equal a post-hoc build at the parameters they were taken at
(lr 0: the model itself; a real lr: the checkpoint saved at their step), for the tiny-model trainer, the LoRA
trainer and a Hugging Face `Trainer`; a captured index opens and traces like a built one; bad input is refused."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.lm import LM  # noqa: E402
from attrilens.testing import CONTEXT_WORDS, random_ids, tiny_config, tiny_lm, tiny_tokenizer  # noqa: E402
from attrilens.training import TrainingIndex, build_index  # noqa: E402
from attrilens.training.capture import GradientCapture, row_steps, tracin_scores  # noqa: E402
from attrilens.training.checkpoints import load_checkpoint_lm  # noqa: E402
from attrilens.training.corpus import Corpus  # noqa: E402
from attrilens.training.gradients import Example, Featurizer  # noqa: E402
from attrilens.training.moments import moment_scales, round_moments  # noqa: E402
from attrilens.training.preconditioning import fit_whitening  # noqa: E402
from attrilens.training.store import read_manifest  # noqa: E402
from attrilens.workflows.lora import finetune_lora  # noqa: E402
from attrilens.workflows.trainer import TrainConfig, train  # noqa: E402

TINY = {"layers": 2, "width": 32, "heads": 2, "vocab_size": 320, "seq_len": 48, "batch_size": 3, "lr": 1e-2,
        "warmup_steps": 2, "progress": False, "threads": 1, "keep_checkpoints": 2}


def _docs(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"d{i}", "text": " ".join(rng.choice(CONTEXT_WORDS) for _ in range(rng.randint(4, 12))) + "."}
            for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _captured(path: Path) -> tuple[dict, np.ndarray, Corpus]:
    m = read_manifest(path)
    feats = np.concatenate([np.load(path / s["file"]) for s in sorted(m["shards"], key=lambda s: s["start"])])
    return m, feats.astype(np.float32), Corpus.from_parquet(path / "corpus.parquet")


def _posthoc(lm: LM, cap: GradientCapture, tokens: list[list[int]]) -> np.ndarray:
    """Post-hoc grad-dot features of `tokens` at `lm`'s parameters with the capture's projection."""
    method = type(cap.method)(cap.method.options, lm)
    return method.finish(method.featurize([Example.block(t) for t in tokens])).numpy()


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-4) -> None:
    scale = np.abs(b).max()
    assert scale > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


def test_tiny_trainer_rows_equal_a_posthoc_build_at_their_checkpoint_and_resume(tmp_path):
    torch.set_num_threads(1)
    corpus = _write_jsonl(tmp_path / "c.jsonl", _docs(11, 18))
    cap = GradientCapture(tmp_path / "cap", proj_dim=512, dtype="float32", shard_size=7)
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "m", arch="llama", epochs=4, **TINY), capture=cap)
    info = json.loads((out / "training.json").read_text())
    m, feats, corpus_rows = _captured(tmp_path / "cap")
    steps = row_steps(m)
    assert m["method"] == "grad-dot" and m["options"]["seed"] == 0 and m["options"]["proj_dim"] == 512
    assert sorted(set(steps.tolist())) == list(range(info["total_steps"]))
    assert corpus_rows.blocks == steps.tolist()  # a row's block is its step
    assert any("+" in d for d in corpus_rows.docs)  # packed rows: several documents per training sequence
    tok = LM.from_pretrained(out).tokenizer
    checked = 0
    for ck in info["checkpoints"]:
        at = load_checkpoint_lm(out / ck["path"], tok)
        rows = np.nonzero(steps == ck["step"])[0]
        want = _posthoc(at, cap, [corpus_rows.tokens[r] for r in rows])
        _close(feats[rows], want)
        before = np.nonzero(steps == ck["step"] - 1)[0]  # the same check one step off must fail: training moved
        other = _posthoc(at, cap, [corpus_rows.tokens[r] for r in before])
        assert np.abs(feats[before] - other).max() > 1e-3 * np.abs(other).max()
        checked += len(rows)
    assert checked > 0
    assert all(lr > 0 for *_, lr in m["capture"]["steps"])  # the learning rate that step applied to its rows

    final = LM.from_pretrained(out)
    idx = TrainingIndex.open(tmp_path / "cap", final)  # the manifest names the final model
    result = idx.trace("the capital of", target=" quenth", top_k=3)
    assert result.method == "grad-dot" and len(result.proponents) == 3
    tracin = tracin_scores(idx, idx.scores(Example.response(final.encode_prompt("the capital of"),
                                                            final.encode_response(" quenth"))))
    assert set(tracin) == set(corpus_rows.docs)

    # killed after 5 steps and resumed: the same rows as the uninterrupted run
    cap2 = GradientCapture(tmp_path / "cap2", proj_dim=512, dtype="float32", shard_size=7)
    cfg = dict(corpus=corpus, out=tmp_path / "m2", arch="llama", epochs=4, **TINY)
    train(TrainConfig(max_steps=5, **cfg), capture=cap2)
    assert not json.loads((tmp_path / "cap2" / "manifest.json").read_text())["complete"]
    train(TrainConfig(**cfg), capture=GradientCapture(tmp_path / "cap2", proj_dim=512, dtype="float32", shard_size=7))
    m2, feats2, corpus2 = _captured(tmp_path / "cap2")
    assert row_steps(m2).tolist() == steps.tolist() and corpus2.docs == corpus_rows.docs
    _close(feats2, feats, 1e-5)


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), 1, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, r in enumerate(rows):
        ids[k, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[k, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_hf_trainer_callback_at_lr_0_equals_the_posthoc_index_and_its_top_k(tmp_path):
    from transformers import Trainer, TrainingArguments

    from attrilens.training.capture import CaptureCallback

    torch.set_num_threads(1)
    lm = tiny_lm("llama", seed=7)
    g = torch.Generator().manual_seed(3)
    data = [{"input_ids": random_ids(lm, int(n), generator=g)} for n in torch.randint(5, 30, (10,), generator=g)]
    cap = GradientCapture(tmp_path / "cap", proj_dim=384, dtype="float32")
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), learning_rate=0.0, per_device_train_batch_size=3,
                             gradient_accumulation_steps=2, max_steps=3, lr_scheduler_type="constant",
                             save_strategy="no", report_to=[], use_cpu=True, logging_strategy="no",
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    before = lm.fingerprint()
    trainer = Trainer(model=lm.model, args=args, train_dataset=data, data_collator=_collate,
                      callbacks=[CaptureCallback(cap, tokenizer=lm.tokenizer, block_len=32)])
    trainer.train()
    lm.model.eval()
    after = LM(lm.model, lm.tokenizer)
    assert after.fingerprint() == before  # lr 0: the parameters never moved
    m, feats, rows = _captured(tmp_path / "cap")
    # 10 examples in micro-batches of 3, two per step: 3+3 | 3+1 (epoch end) | 3+3
    assert len(rows) == 16 and row_steps(m).tolist() == [0] * 6 + [1] * 4 + [2] * 6
    _close(feats, _posthoc(after, cap, rows.tokens), 1e-5)  # gradient accumulation's 1/2 is undone too

    built = build_index(after, rows, tmp_path / "post", method="grad-dot", proj_dim=384, dtype="float32",
                        block_len=32, progress=False)
    captured = TrainingIndex.open(tmp_path / "cap", after)
    for prompt, target in (("the capital of velmora is", " quenth"), ("who founded the bank ?", " ada")):
        a = captured.trace(prompt, target=target, top_k=5)
        b = built.trace(prompt, target=target, top_k=5)
        # a sequence seen in two steps has two equal rows at lr 0: a tie, so the block (step) may swap
        assert [h.id for h in a.proponents] == [h.id for h in b.proponents]
        assert [h.score for h in a.proponents] == pytest.approx([h.score for h in b.proponents], rel=1e-4)


def _gpt2_base(path: Path) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    config = tiny_config("gpt2")
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # training mode must equal eval mode
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_lora_rows_equal_a_posthoc_build_at_the_adapter_checkpoint(tmp_path):
    torch.set_num_threads(1)
    base = _gpt2_base(tmp_path / "base")
    docs = _docs(4, 10)
    cap = GradientCapture(tmp_path / "cap", method="grad_cos", proj_dim=256, dtype="float32")
    out = finetune_lora(base, docs, tmp_path / "lora", epochs=2, lr=2e-2, batch_size=4, seq_len=32,
                        keep_checkpoints=2, progress=False, capture=cap)
    info = json.loads((out / "training.json").read_text())
    m, feats, rows = _captured(tmp_path / "cap")
    steps = row_steps(m)
    assert m["method"] == "grad-cos" and set(rows.docs) == {d["id"] for d in docs} and len(rows) == 20
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    for ck in info["checkpoints"]:
        at = LM.from_pretrained(out / ck["path"], base=base)
        sel = np.nonzero(steps == ck["step"])[0]
        _close(feats[sel], _posthoc(at, cap, [rows.tokens[r] for r in sel]))
        first = _posthoc(at, cap, [rows.tokens[r] for r in np.nonzero(steps == 0)[0]])
        assert np.abs(feats[steps == 0] - first).max() > 1e-3  # the adapter moved since step 0
    idx = TrainingIndex.open(tmp_path / "cap", LM.from_pretrained(out))
    assert len(idx.trace("the capital of", target=" quenth", top_k=2).proponents) == 2


def _trackstar_run(path: Path, options: dict, eval_queries: list[dict] | None = None):
    """Four AdamW steps of a tiny Llama on right-padded random rows with a TrackStar capture; returns the capture,
    the final model, each step's (weights before it, row tokens) and the bias-corrected v̂ after each step."""
    torch.manual_seed(0)
    lm = tiny_lm("llama", seed=21)
    model = lm.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, betas=(0.9, 0.99), foreach=False)
    cap = GradientCapture(path, method="trackstar", proj_dim=320, dtype="float32", shard_size=5, options=options,
                          eval_queries=eval_queries)
    cap.attach(model, lm.tokenizer, block_len=32, optimizer=opt)
    g = torch.Generator().manual_seed(8)
    steps, moments = [], []
    for step in range(4):
        rows = [{"input_ids": random_ids(lm, int(n), generator=g)} for n in torch.randint(4, 20, (3,), generator=g)]
        cap.begin_step(step, 2e-2)
        steps.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, [r["input_ids"] for r in rows]))
        model(**_collate(rows)).loss.backward()
        opt.step()
        opt.zero_grad()
        t = opt.state[model.lm_head.weight]["step"]
        v = {n: opt.state[m.weight]["exp_avg_sq"] / (1 - 0.99 ** float(t)) for n, m in cap.featurizer.modules.items()}
        factored = options.get("moment_kind", "adafactor") == "adafactor"
        moments.append({n: (x.mean(1), x.mean(0)) for n, x in v.items()} if factored else round_moments(v))
    cap.close()
    model.eval()
    return cap, lm, steps, moments


def _featurize_at(lm: LM, weights: dict, moments: dict, tokens: list[list[int]]) -> torch.Tensor:
    """Corrected, projected per-example gradients of `tokens` at `weights` (the capture's projection, seed 0)."""
    at = tiny_lm("llama", seed=21)
    at.model.load_state_dict(weights)
    fz = Featurizer(at, proj_dim=320, scales=moment_scales(moments, 1e-3))
    return fz.features([Example.block(t) for t in tokens])


@pytest.mark.parametrize("kind", ["adam", "adafactor"])
def test_trackstar_rows_are_corrected_by_the_moments_of_their_step_and_finished_with_r(tmp_path, kind):
    torch.set_num_threads(1)
    raw_cap, lm, steps, moments = _trackstar_run(tmp_path / "raw", {"use_r": False, "unit_norm": False,
                                                                     "moment_kind": kind})
    m, raw, rows = _captured(tmp_path / "raw")
    assert m["second_moments"]["source"] == "optimizer" and m["second_moments"]["kind"] == kind
    assert row_steps(m).tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for s, (weights, tokens) in enumerate(steps):
        got = raw[3 * s : 3 * s + 3]
        _close(got, _featurize_at(lm, weights, moments[s], tokens).numpy())
        other = _featurize_at(lm, weights, moments[s - 1] if s else moments[1], tokens).numpy()
        assert np.abs(got - other).max() > 1e-3 * np.abs(other).max()  # another step's moments: other rows

    queries = [{"prompt": "the capital of", "target": " quenth"}, {"prompt": "who founded", "target": " ada"}]
    _, final, _, _ = _trackstar_run(tmp_path / "full", {"moment_kind": kind}, eval_queries=queries)
    m2, finished, _ = _captured(tmp_path / "full")
    assert m2["complete"] and m2["eval_queries"]["n"] == 2 and 0 <= m2["lambda"] <= 1
    assert not list((tmp_path / "full" / "shards").glob("shard-*.npy"))  # the raw shards are gone
    q_examples = [Example.response(final.encode_prompt(q["prompt"]), final.encode_response(q["target"]))
                  for q in queries]
    final_fz = Featurizer(final, proj_dim=320, scales=moment_scales(moments[-1], 1e-3))
    whitening = fit_whitening(torch.from_numpy(raw), final_fz.features(q_examples), damping=1e-2)
    want = torch.nn.functional.normalize(whitening.apply(torch.from_numpy(raw)), dim=1).numpy()
    _close(finished, want, 1e-4)
    idx = TrainingIndex.open(tmp_path / "full", final)
    q = final_fz.features(q_examples[:1])
    expect = torch.nn.functional.normalize(whitening.apply(q), dim=1).numpy() @ want.T
    np.testing.assert_allclose(idx.scores(q_examples[0]), expect[0], atol=1e-4)
    assert len(idx.trace("the capital of", target=" quenth", top_k=3).proponents) == 3


def test_trackstar_capture_in_the_trainers_and_a_hf_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    from attrilens.training.capture import CaptureCallback

    torch.set_num_threads(1)
    corpus = _write_jsonl(tmp_path / "c.jsonl", _docs(5, 12))
    cap = GradientCapture(tmp_path / "cap", method="trackstar", proj_dim=256, shard_size=4)
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "m", arch="llama", epochs=2, **TINY), capture=cap)
    m, feats, _ = _captured(tmp_path / "cap")
    assert m["method"] == "trackstar" and m["second_moments"]["source"] == "optimizer" and "lambda" in m
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-2)  # float16 rows, unit norm
    final = LM.from_pretrained(out)
    assert len(TrainingIndex.open(tmp_path / "cap", final).trace("the capital of", target=" quenth",
                                                                 top_k=2).proponents) == 2
    # killed after 3 steps and resumed: the raw rows kept on disk, the same finished index
    cfg = dict(corpus=corpus, out=tmp_path / "m2", arch="llama", epochs=2, **TINY)
    train(TrainConfig(max_steps=3, resume_every_steps=1, **cfg),
          capture=GradientCapture(tmp_path / "cap2", method="trackstar", proj_dim=256, shard_size=4))
    train(TrainConfig(**cfg), capture=GradientCapture(tmp_path / "cap2", method="trackstar", proj_dim=256,
                                                      shard_size=4))
    m2, feats2, _ = _captured(tmp_path / "cap2")
    assert row_steps(m2).tolist() == row_steps(m).tolist()
    _close(feats2, feats, 2e-3)  # float16 rows

    base = _gpt2_base(tmp_path / "base")
    lcap = GradientCapture(tmp_path / "lcap", method="trackstar", proj_dim=128, dtype="float32")
    lout = finetune_lora(base, _docs(4, 6), tmp_path / "lora", epochs=2, lr=2e-2, batch_size=3, seq_len=32,
                         keep_checkpoints=0, progress=False, capture=lcap)
    lm_ = read_manifest(tmp_path / "lcap")
    assert lm_["weights"] == "lora" and lm_["dim"] == lcap.method.dim
    TrainingIndex.open(tmp_path / "lcap", LM.from_pretrained(lout)).trace("the capital of", target=" quenth", top_k=2)

    lm = tiny_lm("llama", seed=7)
    g = torch.Generator().manual_seed(3)
    data = [{"input_ids": random_ids(lm, int(n), generator=g)} for n in torch.randint(5, 30, (8,), generator=g)]
    hcap = GradientCapture(tmp_path / "hcap", method="trackstar", proj_dim=256, dtype="float32")
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), learning_rate=1e-2, per_device_train_batch_size=4,
                             max_steps=2, save_strategy="no", report_to=[], use_cpu=True, logging_strategy="no",
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    Trainer(model=lm.model, args=args, train_dataset=data, data_collator=_collate,
            callbacks=[CaptureCallback(hcap, tokenizer=lm.tokenizer, block_len=32)]).train()
    hm = read_manifest(tmp_path / "hcap")
    assert hm["complete"] and hm["capture"]["n_steps"] == 2 and hm["second_moments"]["source"] == "optimizer"


@pytest.mark.parametrize("method", ["grad-dot", "trackstar"])
def test_a_captured_step_leaves_nothing_of_its_graph_alive(tmp_path, method):
    """The capture's hooks must not form reference cycles with the step's tensors: one did (the logits' hook held the
    logits), and a LoRA fine-tune of SmolLM2 grew by ~50 MB a step until the OOM killer stopped it."""
    import gc
    import weakref

    lm = tiny_lm("llama", seed=4)
    model = lm.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cap = GradientCapture(tmp_path / method, method=method, proj_dim=64)
    cap.attach(model, lm.tokenizer, optimizer=opt)
    g = torch.Generator().manual_seed(6)
    ids = torch.tensor([random_ids(lm, 12, generator=g) for _ in range(2)])
    gc.collect()
    gc.disable()
    try:
        for step in range(2):
            cap.begin_step(step, 1e-3)
            out = model(input_ids=ids, labels=ids)
            ref = weakref.ref(out.logits)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            del out
            assert ref() is None  # freed by reference counting, not left to the cycle collector
    finally:
        gc.enable()
    cap.close()


def test_what_cannot_be_captured_is_refused(tmp_path):
    for method in ("tracin", "bm25"):
        with pytest.raises(AttrilensError, match="cannot be captured"):
            GradientCapture(tmp_path / "x", method=method)
    with pytest.raises(AttrilensError, match="moment_sample.*optimizer"):
        GradientCapture(tmp_path / "x", method="trackstar", options={"moment_sample": 64})
    with pytest.raises(AttrilensError, match="takes no eval queries"):
        GradientCapture(tmp_path / "x", method="grad-cos", eval_queries=[{"prompt": "a", "target": " b"}])
    with pytest.raises(AttrilensError, match="takes no further options"):
        GradientCapture(tmp_path / "x", method="grad-dot", options={"damping": 0.1})
    with pytest.raises(AttrilensError, match="damping must be positive"):
        GradientCapture(tmp_path / "x", method="trackstar", options={"damping": 0})
    tl = tiny_lm("llama", seed=2)
    with pytest.raises(AttrilensError, match="optimizer=opt"):
        GradientCapture(tmp_path / "t1", method="trackstar").attach(tl.model, tl.tokenizer)
    head_only = torch.optim.AdamW([tl.model.lm_head.weight])
    with pytest.raises(AttrilensError, match="does not train .*weight"):
        GradientCapture(tmp_path / "t2", method="trackstar").attach(tl.model, tl.tokenizer, optimizer=head_only)
    lm = tiny_lm("llama", seed=1)
    g = torch.Generator().manual_seed(9)
    ids = torch.tensor([random_ids(lm, 9, generator=g), random_ids(lm, 9, generator=g)])
    model = lm.model.train()
    cap = GradientCapture(tmp_path / "a", proj_dim=64)
    cap.attach(model, lm.tokenizer)
    logits = model(input_ids=ids).logits  # label smoothing: not a sum of token losses
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                             label_smoothing=0.1)
    with pytest.raises(AttrilensError, match="not a sum of next-token cross-entropies"):
        loss.backward()
    cap.detach()
    cap = GradientCapture(tmp_path / "b", proj_dim=64)
    cap.attach(model, lm.tokenizer)
    with pytest.raises(AttrilensError, match="right-padded"):
        model(input_ids=ids, attention_mask=torch.tensor([[0] + [1] * 8, [1] * 9]))
    cap.detach()
    cap = GradientCapture(tmp_path / "c", proj_dim=64)
    cap.attach(model, lm.tokenizer, block_len=4)
    with pytest.raises(AttrilensError, match="more than the capture's block_len"):
        model(input_ids=ids)
    cap.detach()
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "manifest.json").write_text(json.dumps({"schema": "attrilens/training-index/v3",
                                                                 "complete": True}))
    with pytest.raises(AttrilensError, match="already holds an index"):
        GradientCapture(tmp_path / "done", proj_dim=64).attach(model, lm.tokenizer)


def test_cli_train_capture_then_trace(tmp_path, monkeypatch, capsys):
    import sys

    from attrilens.cli.app import main

    corpus = _write_jsonl(tmp_path / "c.jsonl", _docs(8, 12))

    def run(*argv: str) -> str:
        monkeypatch.setattr(sys, "argv", ["attrilens", *argv])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        assert stop.value.code == 0, out.err[-2000:]
        return out.out

    run("train", "--corpus", str(corpus), "--out", str(tmp_path / "m"), "--layers", "1", "--width", "32",
        "--epochs", "4", "--capture", str(tmp_path / "cap"), "--capture-method", "grad-cos", "--capture-proj-dim", "256")
    m = read_manifest(tmp_path / "cap")
    assert m["method"] == "grad-cos" and m["dim"] <= 256 and m["model_dir"] == str(tmp_path / "m")
    assert row_steps(m).tolist() == [0, 1, 2, 3]  # 12 short documents pack into one row: one row per epoch
    result = json.loads(run("trace", "--index", str(tmp_path / "cap"), "--prompt", "the capital of", "--target",
                            " quenth", "--top-k", "3", "--json"))
    assert result["method"] == "grad-cos" and len(result["proponents"]) == 3
    assert all(-1.0001 <= h["score"] <= 1.0001 for h in result["proponents"])


@pytest.mark.parametrize(("argv", "fragment"), [
    (["train", "--corpus", "{corpus}", "--out", "{new}", "--capture", "{cap}", "--capture-method", "datainf"],
     "cannot be captured"),
    (["train", "--corpus", "{corpus}", "--out", "{new}", "--capture", "{file}"], "--capture"),
    (["train", "--corpus", "{corpus}", "--out", "{new}", "--capture", "{cap}", "--capture-proj-dim", "-3"],
     "proj_dim"),
    (["bench", "capture", "--steps", "0"], "--steps"),
    (["bench", "capture", "--repeats", "0"], "--repeats"),
    (["bench", "capture", "--method", "datainf"], "--method"),
    (["bench", "capture", "--proj-dim", "0"], "--proj-dim"),
], ids=["train/capture-datainf", "train/capture-is-a-file", "train/capture-proj-dim", "bench/steps-0", "bench/repeats-0", "bench/method",
        "bench/proj-dim-0"])
def test_cli_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, monkeypatch, capsys):
    import sys

    from attrilens.cli.app import main

    files = {"corpus": str(_write_jsonl(tmp_path / "c.jsonl", _docs(1, 3))), "new": str(tmp_path / "new"),
             "cap": str(tmp_path / "cap"), "file": str(tmp_path / "a-file")}
    Path(files["file"]).write_text("x")
    monkeypatch.setattr(sys, "argv", ["attrilens", *[a.format(**files) for a in argv]])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "new").exists() and not (tmp_path / "cap").exists()
