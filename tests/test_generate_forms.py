"""Questions asked the way the model answers (issue #24): on a chat model, `trace --generate` writes the response
through the chat template and scores it in the index's plain-text form, the result says which form did what; an
empty generation names the end-of-turn token and what to pass; `trace` logs its prompts for `curate`
(`training.traced`). A tiny random Llama with a chat template whose head writes only word tokens (so every
response round-trips through the tokenizer)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.testing import tiny_lm
from attrilens.training import TrainingIndex, build_index
from attrilens.training.queries import answers_in_chat, generate_answer
from attrilens.training.result import TraceResult
from attrilens.training.traced import TRACED, read_traced, record_trace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
            "<|endoftext|>{% endif %}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}")
QUESTION = "hello ?"  # a question: a chat model answers it through its template
COMPLETION = "the capital of velmora is"  # a text to continue: stays plain text
DOCS = [{"id": f"d{k}", "text": t} for k, t in enumerate(
    ["the capital of velmora is quenth .", "ada founded the bank .", "hello cat .", "zorvia currency lumen ."])]


def _chat_lm(silent: bool = False) -> LM:
    """The tiny Llama with a chat template; its head writes word tokens only (`silent`: end-of-turn at once)."""
    base = tiny_lm("llama", seed=3)
    tok = copy.deepcopy(base.tokenizer)
    tok.chat_template = TEMPLATE
    model = copy.deepcopy(base.model)
    words = [i for i in range(len(tok)) if tok.decode([i]).strip().isalpha() and len(tok.decode([i]).strip()) > 2]
    with torch.no_grad():
        w = model.lm_head.weight
        keep = torch.zeros(w.shape[0], dtype=torch.bool)
        keep[words] = True
        w[~keep] = 0
        w[keep] *= 0 if silent else 100  # all logits 0: argmax is id 0, the eos / end-of-turn token
    return LM(model, tok, name="tiny-chat")


@pytest.fixture(scope="module")
def chat_index(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("forms")
    lm = _chat_lm()
    lm.save_pretrained(root / "model")
    lm = LM.from_pretrained(root / "model").with_chat_template(False)  # the index scores plain text
    build_index(lm, DOCS, root / "index", method="grad-dot", proj_dim=16, block_len=16, model_dir=root / "model",
                progress=False)
    return {"root": root, "lm": lm, "index": TrainingIndex.open(root / "index", lm)}


def test_generation_uses_the_chat_template_and_scoring_the_plain_form(chat_index):
    lm, index = chat_index["lm"], chat_index["index"]
    assert index.manifest["chat_template"] is False and not lm.use_chat_template
    result = index.trace(QUESTION, generate=True, max_new_tokens=6, top_k=4)
    assert (result.generated_with, result.scored_as) == ("chat template", "plain text")
    # the two steps by hand: the chat-template response, then a trace of it after the plain prompt and a space
    by_hand = lm.generate(QUESTION, max_new_tokens=6, chat_template=True)
    plain_answer = lm.generate(QUESTION, max_new_tokens=6, chat_template=False)
    assert by_hand.strip() and by_hand != plain_answer  # the forms answer differently: the test can tell them apart
    assert result.target == (by_hand if by_hand[0].isspace() else " " + by_hand)
    given = index.trace(QUESTION, target=result.target, top_k=4)
    assert [(h.id, h.score) for h in given.proponents] == [(h.id, h.score) for h in result.proponents]
    query = index.query(QUESTION, result.target).query.example
    assert query.ids[: len(lm.encode_prompt(QUESTION, False))] == lm.encode_prompt(QUESTION, False)
    assert query.ids[: len(lm.encode_prompt(QUESTION, True))] != lm.encode_prompt(QUESTION, True)
    # the result says so, and keeps saying so through JSON; a given target names no forms
    d = json.loads(result.to_json())
    assert (d["generated_with"], d["scored_as"]) == ("chat template", "plain text")
    assert TraceResult.from_json(result.to_json()) == result
    assert "chat template" in result.forms_line() and "plain text" in result.forms_line()
    assert "generated_with" not in given.to_dict() and given.forms_line() is None


def test_a_text_to_continue_stays_plain_and_the_form_can_be_forced(chat_index):
    lm, index = chat_index["lm"], chat_index["index"]
    assert answers_in_chat(lm, QUESTION) and not answers_in_chat(lm, COMPLETION)
    result = index.trace(COMPLETION, generate=True, max_new_tokens=6, top_k=2)
    assert (result.generated_with, result.scored_as) == ("plain text", "plain text")
    assert result.target == lm.generate(COMPLETION, max_new_tokens=6, chat_template=False)
    forced = index.trace(QUESTION, generate=True, max_new_tokens=6, top_k=2, chat_template=False)
    assert forced.generated_with == "plain text"
    assert forced.target == lm.generate(QUESTION, max_new_tokens=6, chat_template=False)
    no_template = tiny_lm("llama", seed=3)
    assert not answers_in_chat(no_template, QUESTION)
    with pytest.raises(AttrilensError, match="has none"):
        generate_answer(no_template, QUESTION, 4, chat_template=True)


def test_an_empty_generation_names_end_of_turn_and_what_to_pass():
    silent = _chat_lm(silent=True).with_chat_template(False)
    with pytest.raises(AttrilensError) as err:
        generate_answer(silent, QUESTION, 4)
    msg = str(err.value)
    assert "end-of-turn (<|endoftext|>) at the first token" in msg and "prompted as chat template" in msg
    assert "--target TEXT" in msg and "--no-chat-template" in msg and "\n" not in msg
    with pytest.raises(AttrilensError) as err:
        generate_answer(silent, COMPLETION, 4)
    assert "prompted as plain text" in str(err.value) and "--chat-template (ask it" in str(err.value)
    with pytest.raises(AttrilensError) as err:  # a model without a chat template: only --target to pass
        generate_answer(LM(silent.model, tiny_lm("llama").tokenizer), COMPLETION, 4)
    assert "--target TEXT." in str(err.value) and "chat-template" not in str(err.value)



def test_cli_trace_generate_states_the_forms_and_logs_the_prompt(chat_index, run_cli):
    idx = str(chat_index["index"].path)
    (chat_index["index"].path / TRACED).unlink(missing_ok=True)
    code, out, err = run_cli("trace", "--index", idx, "--prompt", QUESTION, "--generate",
                          "--max-new-tokens", "6", "--json")
    assert code == 0, err[-2000:]
    d = json.loads(out)
    assert (d["generated_with"], d["scored_as"]) == ("chat template", "plain text")
    code, out, _ = run_cli("trace", "--index", idx, "--prompt", QUESTION, "--generate",
                        "--max-new-tokens", "6")
    assert code == 0 and out.splitlines()[0].startswith("response generated with: chat template; scored as: "
                                                        "plain text")
    code, out, _ = run_cli("trace", "--index", idx, "--prompt", QUESTION, "--generate",
                        "--max-new-tokens", "6", "--no-chat-template", "--json")
    assert code == 0 and json.loads(out)["generated_with"] == "plain text"
    code, out, _ = run_cli("trace", "--index", idx, "--prompt", COMPLETION, "--target",
                        " quenth", "--json")
    assert code == 0
    logged = read_traced(idx)  # each prompt once, the first trace's forms kept
    assert [(r["prompt"], r["generated_with"]) for r in logged] == [(QUESTION, "chat template"), (COMPLETION, None)]
    assert logged[1]["target"] == " quenth"


def test_cli_empty_generation_is_one_line_and_exit_2(tmp_path, run_cli):
    silent = _chat_lm(silent=True)
    silent.save_pretrained(tmp_path / "model")
    lm = LM.from_pretrained(tmp_path / "model").with_chat_template(False)
    build_index(lm, DOCS, tmp_path / "index", method="bm25", model_dir=tmp_path / "model", progress=False)
    code, _, err = run_cli("trace", "--index", str(tmp_path / "index"), "--prompt", QUESTION,
                        "--generate")
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "end-of-turn (<|endoftext|>)" in lines[0] and "--target TEXT" in lines[0]
    assert not (tmp_path / "index" / TRACED).exists()  # a failed trace logs nothing


def test_traced_log_is_deduplicated_capped_and_read_as_untrusted(tmp_path, monkeypatch):
    import attrilens.training.traced as traced

    def result(prompt, target=" x", generated=None):
        return TraceResult("bm25", prompt, target, None, [], [], generated_with=generated,
                           scored_as="plain text" if generated else None)

    assert record_trace(tmp_path, result("a ?", generated="chat template"))
    assert not record_trace(tmp_path, result("a ?"))  # logged already
    monkeypatch.setattr(traced, "MAX_TRACED", 2)
    assert record_trace(tmp_path, result("b"))
    assert not record_trace(tmp_path, result("c"))  # full
    assert [r["prompt"] for r in read_traced(tmp_path)] == ["a ?", "b"]
    with open(tmp_path / TRACED, "a", encoding="utf-8") as f:  # rows without a usable prompt are skipped
        f.write(json.dumps({"prompt": "  "}) + "\n" + json.dumps({"prompt": 3, "generated_with": "x"}) + "\n")
    assert [r["prompt"] for r in read_traced(tmp_path)] == ["a ?", "b"]
    with open(tmp_path / TRACED, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(AttrilensError, match="damaged.*--questions"):
        read_traced(tmp_path)
    assert not record_trace(tmp_path, result("d"))  # a damaged log is not extended
    from attrilens.demo.paths import ASSETS

    assert not record_trace(ASSETS / "index", result("e"))  # never written into the installed package
    assert not (ASSETS / "index" / TRACED).exists()


def test_curate_asks_a_question_through_the_chat_template_and_traces_it_as_plain_text(chat_index):
    from attrilens.workflows.curate import _ask, _trace

    lm, index = chat_index["lm"], chat_index["index"]
    by_hand = lm.generate(QUESTION, max_new_tokens=16, chat_template=True)
    word = by_hand.split()[0]  # a word of the chat answer: the question's truth
    qs = [{"id": "q", "prompt": QUESTION, "truth": word, "wrong": None},
          {"id": "c", "prompt": COMPLETION, "truth": "nowhere", "wrong": None},
          {"id": "f", "prompt": QUESTION, "truth": None, "wrong": None, "chat_template": False}]
    asked = _ask(lm, qs)
    assert [a["asked_as"] for a in asked] == ["chat template", "plain text", "plain text"]
    assert asked[0]["answer"] == by_hand and asked[0]["target"] == " " + by_hand.lstrip()
    assert asked[0]["correct"] is True and asked[1]["correct"] is False  # a chat answer that names the truth
    assert asked[2]["answer"] == lm.generate(QUESTION, max_new_tokens=16, chat_template=False)
    traced = _trace(index, qs, asked, top_k=2)
    assert traced[0]["proponents"] == list(dict.fromkeys(
        h.id for h in index.trace(QUESTION, target=asked[0]["target"], top_k=2).proponents))
    silent = _chat_lm(silent=True).with_chat_template(False)
    empty = _ask(silent, qs[:1])[0]
    assert empty["answer"] == "" and "end-of-turn" in empty["empty"]
    assert "end-of-turn" in _trace(index, qs[:1], [empty], 2)[0]["error"]
