"""Every verb × every class of bad input ends as one line on stderr naming the problem, and exit code 2.

The classes: a missing option or file, an empty value, a wrong type, a number out of range, text over the
model's length, a non-UTF-8 file, an `--out` that is an existing file, an `--out` that cannot be created. Each
case runs the real entry point (`attrilens.cli.main`) in-process on the shipped tiny demo model.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from attrilens.cli.app import main
from attrilens.demo.paths import ASSETS, demo_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = str(demo_model_dir("target"))
INDEX = str(ASSETS / "index")
LONG = "the capital of Zarir is Kaper . " * 400  # far more tokens than the demo model's 512 positions

# (case id, argv with {files} placeholders, a fragment the one error line must contain)
CASES = [
    # context
    ("context/missing-option", ["context", "--model", MODEL, "--query", "q"], "--context-file"),
    ("context/missing-file", ["context", "--model", MODEL, "--context-file", "{missing}", "--query", "q"],
     "does not exist"),
    ("context/empty-file", ["context", "--model", MODEL, "--context-file", "{empty}", "--query", "q"], "empty"),
    ("context/empty-query", ["context", "--model", MODEL, "--context-file", "{ctx}", "--query", " "], "query"),
    ("context/blank-response", ["context", "--model", MODEL, "--context-file", "{ctx}", "--query", "q",
                                "--response", "   "], "response"),
    ("context/wrong-type", ["context", "--model", MODEL, "--context-file", "{ctx}", "--query", "q", "--top-k",
                            "two"], "--top-k"),
    ("context/out-of-range", ["context", "--model", MODEL, "--context-file", "{ctx}", "--query", "q", "--top-k",
                              "0"], "--top-k"),
    ("context/negative-tokens", ["context", "--model", MODEL, "--context-file", "{ctx}", "--query", "q",
                                 "--max-new-tokens", "-5"], "--max-new-tokens"),
    ("context/over-length", ["context", "--model", MODEL, "--context-file", "{long}", "--query", "q",
                             "--response", " Kaper"], "model's context"),
    ("context/non-utf8", ["context", "--model", MODEL, "--context-file", "{latin1}", "--query", "q"], "UTF-8"),
    ("context/unknown-method", ["context", "--model", MODEL, "--context-file", "{ctx}", "--query", "q",
                                "--method", "oracle"], "oracle"),
    ("context/missing-model", ["context", "--model", "{missing}", "--context-file", "{ctx}", "--query", "q"],
     "does not exist"),
    ("context/pickled-model", ["context", "--model", "{pickled}", "--context-file", "{ctx}", "--query", "q"],
     "pickle files (pytorch_model.bin)"),
    ("context/unknown-model-name", ["context", "--model", "smollm9", "--context-file", "{ctx}", "--query", "q"],
     "smollm2-135m-instruct"),
    # inspect
    ("inspect/missing-option", ["inspect", "--model", MODEL], "--prompt"),
    ("inspect/empty-prompt", ["inspect", "--model", MODEL, "--prompt", ""], "prompt"),
    ("inspect/wrong-type", ["inspect", "--model", MODEL, "--prompt", "hi there", "--layer", "x"], "--layer"),
    ("inspect/out-of-range-top-k", ["inspect", "--model", MODEL, "--prompt", "hi there", "--top-k", "-1"],
     "--top-k"),
    ("inspect/out-of-range-layer", ["inspect", "--model", MODEL, "--prompt", "hi there", "--layer", "99"],
     "Layer 99"),
    ("inspect/out-of-range-position", ["inspect", "--model", MODEL, "--prompt", "hi there", "--position", "99"],
     "position 99"),
    ("inspect/over-length", ["inspect", "--model", MODEL, "--prompt", LONG], "model's context"),
    ("inspect/unknown-preset", ["inspect", "--model", MODEL, "--prompt", "hi", "--preset", "x-ray"], "x-ray"),
    # trace
    ("trace/missing-index", ["trace", "--index", "{missing}", "--prompt", "p", "--target", " t"], "manifest"),
    ("trace/no-target", ["trace", "--index", INDEX, "--prompt", "In Vokur, the capital city is"], "--target"),
    ("trace/out-of-range", ["trace", "--index", INDEX, "--prompt", "In Vokur, the capital city is", "--target",
                            " Murtin", "--top-k", "0"], "top"),
    ("trace/over-length", ["trace", "--index", INDEX, "--prompt", "In Vokur, the capital city is", "--target",
                           LONG], "model's context"),
    # index build
    ("index/non-utf8", ["index", "build", "--model", MODEL, "--corpus", "{latin1}", "--out", "{new}"], "UTF-8"),
    ("index/empty-corpus", ["index", "build", "--model", MODEL, "--corpus", "{empty}", "--out", "{new}"], "empty"),
    ("index/out-is-file", ["index", "build", "--model", MODEL, "--corpus", "{corpus}", "--out", "{file}"],
     "existing file"),
    ("index/unwritable-out", ["index", "build", "--model", MODEL, "--corpus", "{corpus}", "--out", "{under_file}"],
     "--out"),
    ("index/wrong-type", ["index", "build", "--model", MODEL, "--corpus", "{corpus}", "--out", "{new}",
                          "--proj-dim", "big"], "--proj-dim"),
    ("index/proj-dim-over-full-gradient", ["index", "build", "--model", MODEL, "--corpus", "{corpus}", "--out",
                                          "{new}", "--proj-dim", "100000000"], "full gradient"),
    ("index/over-length-block", ["index", "build", "--model", MODEL, "--corpus", "{corpus}", "--out", "{new}",
                                 "--block-len", "1024"], "--block-len"),
    ("index/unknown-method", ["index", "build", "--model", MODEL, "--corpus", "{corpus}", "--out", "{new}",
                              "--method", "oracle"], "oracle"),
    # train, world, demo
    ("train/non-utf8", ["train", "--corpus", "{latin1}", "--out", "{new}"], "UTF-8"),
    ("train/missing-corpus", ["train", "--corpus", "{missing}", "--out", "{new}"], "does not exist"),
    ("train/out-is-file", ["train", "--corpus", "{corpus}", "--out", "{file}"], "existing file"),
    ("world/out-is-file", ["world", "--out", "{file}"], "existing file"),
    ("world/wrong-type", ["world", "--out", "{new}", "--seed", "one"], "--seed"),
    ("demo/out-is-file", ["demo", "--out", "{file}"], "existing file"),
    ("demo/out-of-range", ["demo", "--out", "{new}", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("demo/unknown-model-name", ["demo", "--out", "{new}", "--model", "smollm9"], "smollm2-135m-instruct"),
    # models, serve, bench, the app itself
    ("models/unknown-name", ["models", "get", "smollm9"], "smollm2-135m-instruct"),
    ("models/missing-name", ["models", "path"], "name"),
    ("serve/out-of-range-port", ["serve", "--model", MODEL, "--port", "-3"], "--port"),
    ("serve/missing-model", ["serve", "--model", "{missing}"], "does not exist"),
    ("bench/unknown-model-name", ["bench", "inspect", "--model", "smollm9"], "smollm2-135m-instruct"),
    ("app/unknown-verb", ["explain"], "explain"),
    ("app/unknown-option", ["inspect", "--model", MODEL, "--prompt", "hi", "--colour"], "--colour"),
]


@pytest.fixture(scope="module", autouse=True)
def quiet_transformers():
    """transformers' log handler keeps the first test's captured stderr, closed by the next test: its warnings
    (e.g. on over-length text) would print a logging traceback that is the harness's, not ours."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    yield
    logging.set_verbosity(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    (root / "ctx.txt").write_text("Zarir has its capital at Kaper. Kuli speaks Salar.", encoding="utf-8")
    (root / "long.txt").write_text(LONG, encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    (root / "latin1.txt").write_bytes("{\"text\": \"Café in Zürich\"}\n".encode("latin-1"))
    (root / "corpus.jsonl").write_text('{"id": "a", "text": "Zarir has its capital at Kaper."}\n', encoding="utf-8")
    (root / "a-file").write_text("not a directory", encoding="utf-8")
    pickled = root / "pickled-model"  # a model whose weights are a pickle: refused before anything reads it
    pickled.mkdir()
    shutil.copy(demo_model_dir("target") / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n")
    return {"ctx": str(root / "ctx.txt"), "long": str(root / "long.txt"), "empty": str(root / "empty.txt"),
            "latin1": str(root / "latin1.txt"), "corpus": str(root / "corpus.jsonl"), "file": str(root / "a-file"),
            "under_file": str(root / "a-file" / "out"), "missing": str(root / "missing"),
            "pickled": str(pickled)}


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], fragment: str, files, tmp_path, monkeypatch, capsys):
    files = {**files, "new": str(tmp_path / "new")}  # a fresh --out per case
    monkeypatch.setattr(sys, "argv", ["attrilens", *[a.format(**files) if "{" in a else a for a in argv]])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert stop.value.code == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-2000:]
    assert fragment in lines[0], lines[0]
    assert not os.path.exists(files["new"]) or not os.listdir(files["new"]), "bad input left output behind"
