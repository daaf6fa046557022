"""What every verb that loads a model shares: model options that take a registered name or a directory, the
`--chat-template/--no-chat-template` switch, and the early-exit proxy spelling `early-exit:K`; and the corpus
options (`--text-field`, `--id-field`) of the verbs that read a training corpus."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from attrilens.errors import AttrilensError
from attrilens.lm import LM

MODEL_HELP = "A registered model name (`attrilens models list`, e.g. smollm2-135m-instruct) or a local model directory."
ChatTemplate = Annotated[bool | None, typer.Option(
    "--chat-template/--no-chat-template",
    help="Wrap prompts in the tokenizer's chat template (default: on for chat models in `context`; off in `inspect`, "
         "where positions would land on template tokens, and in `index build`, whose documents are plain text — "
         "`trace` follows the index). Sources, spans and positions always index your own text.")]
MaxNewTokens = Annotated[int, typer.Option(help="Most tokens generated for a response the model writes itself.")]
# the corpus options of every verb that reads a training corpus (attrilens.corpus_formats)
CORPUS_HELP = ("Training corpus: a .jsonl file of {\"id\",\"text\"} objects, a .parquet file, a datasets "
               "save_to_disk folder, a .txt/.md file (one document per paragraph), or a folder of Parquet, JSONL "
               "or text files (one document per text file).")
TextField = Annotated[str, typer.Option(help="The corpus field (JSON key, Parquet or datasets column) holding each "
                                             "document's text.")]
IdField = Annotated[str, typer.Option(help="The corpus field holding each document's unique id (without one: "
                                           "positional ids such as line-N).")]
_EARLY_EXIT = re.compile(r"^early[-_]exit:(\d+)$")


def load_lm(spec: str, chat_template: bool | None = None) -> LM:
    """The model a --model option names (registered name or directory), with the chat template switched as asked."""
    return LM.from_pretrained(spec).with_chat_template(chat_template)


def load_proxy(spec: str | None, target: LM) -> LM | None:
    """The --proxy model: a registered name or directory, or `early-exit:K` — the target's first K blocks
    with its own final norm and unembedding (no extra weights)."""
    if spec is None:
        return None
    match = _EARLY_EXIT.match(spec.strip().lower())
    if match:
        return target.early_exit(int(match.group(1)))
    if spec.strip().lower().startswith(("early-exit", "early_exit")):
        raise AttrilensError(f"--proxy {spec!r} is not early-exit:K. Pass e.g. --proxy early-exit:{target.n_layers // 3}.")
    return LM.from_pretrained(spec).with_chat_template(target.use_chat_template)
