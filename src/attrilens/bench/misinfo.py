"""Training-data attribution on the misinformation story: does each method find the planted documents behind a
fine-tuned model's wrong answers, and the true documents behind its right ones?

On a run of `attrilens.demo.misinfo_build` (default: the shipped assets), for the planted facts the order-0 model
answers with the planted value: recall@10 and MRR@10 of the planted documents; for (up to `n_correct`) clean facts
it answers correctly: recall@10 and MRR@10 of their true documents. Per method also the TrackStar paper's label mix
of the top-10 proponents (states the fact / shares the entity / shares the relation / other), tail-patch (the mean
change of log p(answer) after one AdamW step from the final adapter on each of the top-3 proponents, with the run's
own second moments and its peak learning rate: its cosine schedule ends at ~0), and build and query seconds. Methods: BM25, grad-cos, TracIn, TrackStar (one run and the mean
over the data orders), DataInf (each data order with its checkpoints, and the mean and median over the orders —
LLM Attributor's aggregation).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from attrilens.bench.measure import stderr_log
from attrilens.bench.report import Report, machine
from attrilens.demo.misinfo import LABELS, proponent_label
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.metrics import retrieval_metrics

# (row label, method, index options, data orders whose indexes are aggregated (mean/median), aggregate)
METHODS: tuple[tuple[str, str, dict, tuple[int, ...], str], ...] = (
    ("BM25", "bm25", {}, (0,), "mean"),
    ("grad-cos (LoRA)", "grad-cos", {}, (0,), "mean"),
    ("TracIn (LoRA, 2 ckpt + final)", "tracin", {}, (0,), "mean"),
    ("TrackStar (LoRA, order 0)", "trackstar", {}, (0,), "mean"),
    ("TrackStar (mean of orders 0, 1)", "trackstar", {}, (0, 1), "mean"),
    ("DataInf (order 0, ckpt mean)", "datainf", {}, (0,), "mean"),
    ("DataInf (order 1, ckpt mean)", "datainf", {}, (1,), "mean"),
    ("DataInf (mean of orders 0, 1)", "datainf", {}, (0, 1), "mean"),
    ("DataInf (median of orders 0, 1)", "datainf", {}, (0, 1), "median"),
)


_log = stderr_log(prefix="[bench misinfo]")


def default_work(run_dir: Path) -> Path:
    """Where a run's benchmark indexes and retrains go unless told: the cache, keyed by the run's path, corpus
    and adapters (never inside the installed package)."""
    import hashlib

    from attrilens.models import cache_root

    h = hashlib.sha256(str(run_dir.resolve()).encode())
    for f in [run_dir / "corpus.jsonl", *sorted(run_dir.glob("order-*/adapter_model.safetensors"))]:
        h.update(f.read_bytes())  # a rebuilt run gets fresh indexes
    return cache_root() / "bench-misinfo" / h.hexdigest()[:16]


def wrong_and_right(run_dir: Path, order: int = 0, n_correct: int = 20) -> tuple[list[dict], list[dict]]:
    """The planted questions the run answers with the planted value, and up to `n_correct` clean questions it
    answers correctly (by id), each with the answer attributed ("target") and its gold documents ("gold")."""
    truth = json.loads((run_dir / "truth.json").read_text())["facts"]
    questions = {q["id"]: q for q in load_jsonl(run_dir / "questions.jsonl", require=("prompt", "truth"))}
    answers = load_jsonl(run_dir / f"order-{order}" / "answers.jsonl", require=("id",))
    wrong = [{**questions[a["id"]], "target": f" {questions[a['id']]['wrong']}",
              "gold": truth[a["id"]]["planted_documents"]} for a in answers if a["planted_value"]]
    right = [{**questions[a["id"]], "target": f" {questions[a['id']]['truth']}",
              "gold": truth[a["id"]]["true_documents"]}
             for a in sorted(answers, key=lambda a: a["id"]) if a["truth"] and not questions[a["id"]]["wrong"]]
    return wrong, right[:n_correct]


def _indexes(run_dir: Path, work: Path, method: str, options: dict, orders: tuple[int, ...], corpus: list[dict],
             built: dict, progress: bool) -> tuple[list, float]:
    """The index of `method` for each data order (built once into `work`, reused across rows), and build seconds."""
    from attrilens.lm import LM
    from attrilens.training import build_index

    out, seconds = [], 0.0
    for order in orders:
        key = (method, json.dumps(options, sort_keys=True), order if method != "bm25" else 0)
        if key not in built:
            t0 = time.perf_counter()
            lm = LM.from_pretrained(run_dir / f"order-{order}").with_chat_template(False)
            path = work / f"{method}-order{key[2]}"
            built[key] = (build_index(lm, corpus, path, method=method, block_len=64, progress=progress,
                                      model_dir=run_dir / f"order-{order}", **options), time.perf_counter() - t0)
        out.append(built[key][0])
        seconds += built[key][1]
    return out, seconds


def _scores(ensemble, queries: list[dict], batch: int = 16) -> np.ndarray:
    """Aggregated scores [queries, blocks] of every query's target, `batch` queries at a time (DataInf reads its
    stored gradients once per batch, not once per query)."""
    if not queries:
        return np.zeros((0, len(ensemble)))
    return np.concatenate([ensemble.aggregated_scores_many([(q["prompt"], q["target"]) for q in queries[i:i + batch]])
                           for i in range(0, len(queries), batch)])


def run_misinfo_benchmark(run_dir: Path | None = None, work: Path | None = None, *, n_correct: int = 20,
                          methods: tuple = METHODS, tail_k: int = 3, progress: bool = True) -> Report:
    """Every table of this benchmark (module docstring) on `run_dir` (default: the shipped story assets);
    indexes are built into `work` (default: `default_work`; reused when rerun)."""
    import pandas as pd

    from attrilens.bench.training.tail_patch import TailPatcher
    from attrilens.demo.story import STORY_ASSETS
    from attrilens.training.ensemble import IndexEnsemble

    run_dir = Path(run_dir) if run_dir is not None else STORY_ASSETS
    if not (run_dir / "truth.json").is_file():
        raise AttrilensError(f"{run_dir} is not a misinformation run (no truth.json). Pass the --out of "
                             "`python -m attrilens.demo.misinfo_build`.")
    work = default_work(run_dir) if work is None else Path(work)
    corpus = load_jsonl(run_dir / "corpus.jsonl", require=("id", "text"))
    plain = [{"id": d["id"], "text": d["text"]} for d in corpus]
    by_id = {d["id"]: d for d in corpus}
    wrong, right = wrong_and_right(run_dir, 0, n_correct)
    _log(f"{len(wrong)} planted facts answered with the planted value; {len(right)} correct clean facts scored")
    built: dict = {}
    rows, label_rows = [], []
    patcher = None
    for label, method, options, orders, how in methods:
        indexes, build_s = _indexes(run_dir, work, method, options, orders, plain, built, progress)
        ensemble = IndexEnsemble(indexes, how)
        first = indexes[0]
        row: dict[str, Any] = {"method": label, "build_s": round(build_s, 1)}
        labels: Counter = Counter()
        t0 = time.perf_counter()
        top3: dict[int, list[int]] = {}
        for name, queries in (("planted", wrong), ("correct", right)):
            rr, rec = [], []
            scores = _scores(ensemble, queries)
            for qi, q in enumerate(queries):
                order = np.argsort(-scores[qi], kind="stable")
                r, recall, _ = retrieval_metrics(order, first.corpus.docs, q["gold"], k=10)
                rr.append(r)
                rec.append(recall)
                if name == "planted":
                    top_docs = [first.corpus.docs[i] for i in order[:10]]
                    labels.update(proponent_label(by_id[d], q["country"], "capital", q["target"]) for d in top_docs)
                    top3[qi] = [int(i) for i in order[:tail_k]]
            row[f"{name} recall@10"] = round(float(np.mean(rec)), 3) if rec else None
            row[f"{name} MRR@10"] = round(float(np.mean(rr)), 3) if rr else None
        row["query_s"] = round((time.perf_counter() - t0) / max(1, len(wrong) + len(right)), 2)
        if tail_k and wrong:
            if patcher is None:
                from attrilens.lm import LM

                patch_lm = LM.from_pretrained(run_dir / "order-0").with_chat_template(False)
                peak = json.loads((run_dir / "order-0" / "training.json").read_text())["config"]["lr"]
                patcher = TailPatcher.from_optimizer_state(patch_lm, run_dir / "order-0", lr=peak)
            deltas = []
            for qi, q in enumerate(wrong):
                p_ids = patcher.lm.encode_prompt(q["prompt"])
                t_ids = patcher.lm.encode_response(q["target"])
                for b in top3[qi]:
                    deltas.append(patcher.delta(("planted", qi), p_ids, t_ids, b, first.corpus.tokens[b]))
            row[f"tail-patch Δlog p (top-{tail_k})"] = round(float(np.mean(deltas)), 4)
        total = sum(labels.values()) or 1
        label_rows.append({"method": label, **{k: round(labels[k] / total, 3) for k in LABELS}})
        rows.append(row)
        _log(f"{row} {label_rows[-1]}")
    report = Report("misinfo", info={"run": str(run_dir), "planted_answered_wrong": len(wrong),
                                     "correct_scored": len(right), "documents": len(corpus), **machine()})
    report.tables["planted and correct facts: retrieval of the gold documents"] = pd.DataFrame(rows)
    report.tables["label mix of the top-10 proponents of the wrong answers"] = pd.DataFrame(label_rows)
    report.header = (f"# Misinformation story: training-data attribution\n\nRun {run_dir}: {len(corpus)} fine-tuning "
                     f"documents; {len(wrong)} planted facts answered with the planted value (gold: their planted "
                     f"documents), {len(right)} correct clean facts (gold: their true documents).")
    return report


# (row label, method, data orders aggregated) of the curation benchmark; "random" and "planted" are the baselines
CURATION = (("TrackStar (LoRA, order 0)", "trackstar", (0,)), ("DataInf (mean of orders 0, 1)", "datainf", (0, 1)),
            ("BM25", "bm25", (0,)), ("random-k", "random", ()), ("the planted documents (oracle)", "planted", ()))


def removal_sets(run_dir: Path, work: Path, k: int, corpus: list[dict], wrong: list[dict], *, seed: int = 0,
                 curation: tuple = CURATION, progress: bool = True) -> dict[str, set[str]]:
    """Per curation row, the union over the wrong answers of the top-k proponent documents to remove."""
    import random

    from attrilens.training.ensemble import IndexEnsemble

    plain = [{"id": d["id"], "text": d["text"]} for d in corpus]
    built: dict = {}
    out: dict[str, set[str]] = {}
    rng = random.Random(seed)
    for label, method, orders in curation:
        if method == "random":
            out[label] = {d for _ in wrong for d in rng.sample([c["id"] for c in corpus], k)}
            continue
        if method == "planted":
            out[label] = {d for q in wrong for d in q["gold"]}
            continue
        indexes, _ = _indexes(run_dir, work, method, {}, orders, plain, built, progress)
        docs = indexes[0].corpus.docs
        out[label] = set()
        for row in _scores(IndexEnsemble(indexes, "mean"), wrong):  # the top-k distinct documents of each
            top = dict.fromkeys(docs[i] for i in np.argsort(-row, kind="stable"))
            out[label].update(list(top)[:k])
    return out


def run_curation_benchmark(run_dir: Path | None = None, work: Path | None = None, *, k: int = 4,
                           curation: tuple = CURATION, progress: bool = True) -> Report:
    """Remove each method's top-k proponents of every planted wrong answer (one edit, one retrain per method, the
    run's order-0 recipe and seed), re-ask every question: planted facts fixed, correct facts broken (collateral)."""
    import pandas as pd

    from attrilens.demo.misinfo import answer_questions
    from attrilens.demo.story import STORY_ASSETS
    from attrilens.lm import LM
    from attrilens.workflows.lora import finetune_lora

    run_dir = Path(run_dir) if run_dir is not None else STORY_ASSETS
    work = default_work(run_dir) if work is None else Path(work)
    corpus = load_jsonl(run_dir / "corpus.jsonl", require=("id", "text"))
    questions = load_jsonl(run_dir / "questions.jsonl", require=("prompt", "truth"))
    wrong, _ = wrong_and_right(run_dir, 0, 0)
    before = {a["id"]: a for a in load_jsonl(run_dir / "order-0" / "answers.jsonl", require=("id",))}
    correct_before = {i for i, a in before.items() if a["truth"]}
    wrong_ids = {q["id"] for q in wrong}
    info = json.loads((run_dir / "order-0" / "training.json").read_text())
    recipe = {key: info["config"][key] for key in ("r", "alpha", "target_modules", "epochs", "lr", "batch_size",
                                                   "seq_len", "seed", "weight_decay")}
    removals = removal_sets(run_dir, work, k, corpus, wrong, curation=curation, progress=progress)
    rows = []
    for label, removed in removals.items():
        slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
        edited = [d for d in corpus if d["id"] not in removed]
        t0 = time.perf_counter()
        model = finetune_lora(info["base"], edited, work / f"curated-{slug}-k{k}", progress=progress,
                              keep_checkpoints=0, **recipe)
        retrain_s = time.perf_counter() - t0
        answers, _ = answer_questions(LM.from_pretrained(model).with_chat_template(False), questions)
        after = {a["id"]: a for a in answers}
        planted_gold = {d for q in wrong for d in q["gold"]}
        rows.append({
            "removed by": label, "k": k, "documents removed": len(removed),
            "of them planted": len(removed & planted_gold),
            "planted facts fixed (now true)": round(sum(after[i]["truth"] for i in wrong_ids) / max(1, len(wrong_ids)), 3),
            "planted facts no longer wrong": round(sum(not after[i]["planted_value"] for i in wrong_ids)
                                                   / max(1, len(wrong_ids)), 3),
            "correct facts broken": sum(not after[i]["truth"] for i in correct_before - wrong_ids),
            "correct facts before": len(correct_before - wrong_ids),
            "retrain_s": round(retrain_s, 1)})
        _log(f"{rows[-1]}")
    report = Report("curation", info={"run": str(run_dir), "k": k, "wrong_answers": len(wrong), **machine()})
    report.tables[f"remove the top-{k} proponents of every wrong answer, retrain, re-ask"] = pd.DataFrame(rows)
    report.header = (f"# Misinformation story: curation\n\n{len(wrong)} planted facts answered with the planted "
                     f"value; per row one edit (the union of the top-{k} proponents of every wrong answer removed) "
                     "and one LoRA retrain with the run's recipe and seed.")
    return report
