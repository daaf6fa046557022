"""`attrilens trace --batch FILE`: every query of a JSONL / Parquet / text file traced with one loaded index, each
result equal to the single-prompt trace of that query; bad files end as one line naming the row and the fix."""

from __future__ import annotations

import json
import os
import random

import pytest

from attrilens.demo.paths import ASSETS
from attrilens.jsonl import write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
INDEX = str(ASSETS / "index")



@pytest.fixture(scope="module")
def queries():
    """Three facts of the shipped world drawn at random (prompt, target), with ids."""
    from attrilens.jsonl import load_jsonl

    facts = load_jsonl(ASSETS / "world" / "facts.jsonl", require=("prompt", "target"))
    picked = random.Random().sample(facts, 3)
    return [{"qid": f"q{k}", "question": f["prompt"], "answer": f["target"]} for k, f in enumerate(picked)]


def _single(run_cli, q) -> dict:
    code, out, err = run_cli("trace", "--index", INDEX, "--prompt", q["question"], "--target",
                          q["answer"], "--top-k", "4", "--json")
    assert code == 0, err
    return json.loads(out)


def _same(a: dict, b: dict) -> None:
    assert [h["id"] for h in a["proponents"]] == [h["id"] for h in b["proponents"]]
    assert [h["score"] for h in a["proponents"]] == pytest.approx([h["score"] for h in b["proponents"]], rel=1e-5)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_batch_equals_single_traces(fmt, queries, tmp_path, run_cli):
    path = tmp_path / f"queries.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, queries)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(queries), path)
    code, out, err = run_cli("trace", "--index", INDEX, "--batch", str(path), "--prompt-field",
                          "question", "--target-field", "answer", "--id-field", "qid", "--top-k", "4", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["query_id"] for r in lines] == [q["qid"] for q in queries]
    for q, r in zip(queries, lines, strict=True):
        assert r["prompt"] == q["question"] and r["target"] == q["answer"]
        _same(r, _single(run_cli, q))


def test_batch_text_file_generates_and_prints_tables(queries, tmp_path, run_cli):
    path = tmp_path / "prompts.txt"
    path.write_text("\n\n".join(q["question"] for q in queries[:2]) + "\n")
    code, out, err = run_cli("trace", "--index", INDEX, "--batch", str(path), "--generate",
                          "--max-new-tokens", "2", "--top-k", "3")
    assert code == 0, err
    assert out.count("## prompts.txt:") == 2 and f"## prompts.txt:3: {queries[1]['question']!r}" in out


@pytest.mark.parametrize("case, fragment", [
    ("no-target", 'has no "target"'),
    ("duplicate-id", "appears twice"),
    ("missing-field", "has the fields"),
    ("both", "exactly one of --prompt"),
    ("target-with-batch", "Drop --target"),
    ("fields-without-batch", "--batch"),
])
def test_bad_batches_are_one_line(case, fragment, queries, tmp_path, run_cli):
    path = tmp_path / "q.jsonl"
    rows = [{"id": q["qid"], "prompt": q["question"], "target": q["answer"]} for q in queries]
    args = ["--batch", str(path)]
    if case == "no-target":
        del rows[1]["target"]
    elif case == "duplicate-id":
        rows[2]["id"] = rows[0]["id"]
    elif case == "missing-field":
        args += ["--prompt-field", "question"]
    elif case == "both":
        args += ["--prompt", "p"]
    elif case == "target-with-batch":
        args += ["--target", " x"]
    else:
        args = ["--prompt", rows[0]["prompt"], "--target", rows[0]["target"], "--prompt-field", "question"]
    write_jsonl(path, rows)
    code, out, err = run_cli("trace", "--index", INDEX, *args, "--json")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    if case == "no-target":
        assert "q.jsonl:2" in err and "--generate" in err
    if case == "duplicate-id":
        assert "q.jsonl:3" in err
    assert out == ""  # the whole file is checked before anything is traced
