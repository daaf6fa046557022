"""The command line: useful --help for every verb, one-line errors with exit code 2, JSON-only stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from attrilens.cli import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VERBS = ["demo", "world", "train", "models list", "models get", "models path", "context", "index build", "trace",
         "inspect", "bench context", "bench training", "bench inspect", "bench verbatim", "bench capture",
         "bench scale", "bench train", "bench misinfo", "curate", "serve"]


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "attrilens.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_useful_help(verb: str):
    result = CliRunner().invoke(app, [*verb.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_model_directory(tmp_path):
    (tmp_path / "ctx.txt").write_text("One. Two.")
    proc = _cli("inspect", "--model", str(tmp_path / "missing"), "--prompt", "x", "--json")
    _assert_one_line_error(proc, "does not exist", "local Hugging Face model directory")


def test_non_causal_model_directory(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    proc = _cli("inspect", "--model", str(tmp_path), "--prompt", "x", "--json")
    _assert_one_line_error(proc, "not a causal LM")


def test_empty_corpus_and_line_without_text(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _assert_one_line_error(_cli("train", "--corpus", str(empty), "--out", str(tmp_path / "m")), "is empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "body": "no text here"}\n')
    _assert_one_line_error(_cli("train", "--corpus", str(bad), "--out", str(tmp_path / "m")), ':2 has no "text" field')


def test_prompt_longer_than_context(tmp_path):
    from attrilens.testing import tiny_lm

    lm = tiny_lm("gpt2")
    lm.save_pretrained(tmp_path / "m")
    proc = _cli("inspect", "--model", str(tmp_path / "m"), "--prompt", "the " * 400, "--json")
    _assert_one_line_error(proc, "longer than the model's context")


def test_world_json_summary_is_only_json(tmp_path):
    proc = _cli("world", "--out", str(tmp_path / "w"), "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary and (tmp_path / "w" / "corpus.jsonl").is_file()


def test_finetune_needs_base_and_lora_together(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "the cat"}\n')
    proc = _cli("train", "--corpus", str(corpus), "--out", str(tmp_path / "m"), "--lora")
    _assert_one_line_error(proc, "needs both --base DIR and --lora")


def test_lora_finetune_from_the_cli(tmp_path):
    from attrilens.testing import tiny_lm

    lm = tiny_lm("llama")
    lm.save_pretrained(tmp_path / "base")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"id": "d{i}", "text": "the capital of velmora is quenth {i}"}}\n' for i in range(6)))
    proc = _cli("train", "--corpus", str(corpus), "--out", str(tmp_path / "ft"), "--base", str(tmp_path / "base"),
                "--lora", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any((tmp_path / "ft").rglob("adapter_model.safetensors"))


def test_help_spells_names_with_hyphens_and_has_no_double_negation():
    from attrilens.context import method_names
    from attrilens.patchscopes import presets
    from attrilens.training import TDA_METHODS

    texts = {verb: CliRunner().invoke(app, [*verb.split(), "--help"], terminal_width=400).output
             for verb in ("context", "index build", "inspect")}
    assert all(n in " ".join(texts["context"].split()) for n in method_names())
    assert all(n in " ".join(texts["index build"].split()) for n in TDA_METHODS.names())
    assert all(n in " ".join(texts["inspect"].split()) for n in presets.PRESETS.names())
    assert all("_" not in n for n in [*method_names(), *TDA_METHODS.names(), *presets.PRESETS.names()])
    assert all("--no-no-" not in t for t in texts.values())


def test_unknown_model_name_lists_the_registered_ones(tmp_path):
    (tmp_path / "ctx.txt").write_text("One. Two.")
    proc = _cli("context", "--model", "smollm3-1b", "--context-file", str(tmp_path / "ctx.txt"), "--query", "q", "--json")
    _assert_one_line_error(proc, "does not exist", "smollm2-135m-instruct", "gemma3-270m")
    proc = _cli("models", "get", "smollm3-1b")
    _assert_one_line_error(proc, "Unknown model 'smollm3-1b'", "smollm2-135m-instruct")


def test_non_utf8_corpus_and_an_out_that_is_a_file_are_one_line_errors(tmp_path):
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    _assert_one_line_error(_cli("train", "--corpus", str(corpus), "--out", str(tmp_path / "m")), "latin1.jsonl:1 is not UTF-8")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    _assert_one_line_error(_cli("demo", "--out", str(taken)), "--out", "is an existing file")
