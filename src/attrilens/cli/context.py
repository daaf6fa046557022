"""CLI verbs of the context lens: `attrilens context ...` and `attrilens bench context`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attrilens.cli.loading import MODEL_HELP, ChatTemplate, MaxNewTokens, load_lm, load_proxy
from attrilens.cli.options import given_values, option_flag
from attrilens.cli.output import JsonFlag, choices_help, emit
from attrilens.context.spec import method_names
from attrilens.errors import AttrilensError
from attrilens.options import merge_values, parse_assignments

if TYPE_CHECKING:
    from attrilens.context.result import ContextResult

METHOD_HELP = ("An estimator, alone or with wrappers joined by '+' (e.g. cached+hierarchical+proxy-pruning; "
               "'loo' alone = naive exact LOO; default cached).")
ContextOption = option_flag("paragraph_k=1", "context")


def method_options(ctx: typer.Context, method: str, flags: dict[str, object], texts: list[str] | None) -> dict:
    """The attributor's option values: the verb's own flags (`flags`, name → value) and `--option` text typed by
    the fields of the method's components; a name none of them takes names the ones they do, and a value given
    both as a flag and as --option that disagrees is an error."""
    from attrilens.context.pipeline import option_values
    from attrilens.context.spec import parse_method

    typed = option_values(parse_method(method), parse_assignments(texts))
    return {**flags, **merge_values(given_values(ctx, flags), typed)}


def _read_context(path: Path) -> str:
    """The context file's text; a missing or non-UTF-8 file is a one-line error naming the fix."""
    if not path.is_file():
        raise AttrilensError(f"Context file {str(path)!r} does not exist. Pass --context-file with a text file.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AttrilensError(f"Context file {str(path)!r} is not UTF-8 text. Save it as UTF-8.") from None


def faithfulness_lines(result: ContextResult) -> list[str]:
    """The faithfulness report of a result as text lines: the two log-likelihoods when pruned, then any warning."""
    f = result.faithfulness
    if f is None:
        return []
    lines = []
    if f.pruned and f.ll_full is not None and f.ll_kept is not None:
        lines.append(f"faithfulness: LL(response | full context) = {f.ll_full:.3f}, LL(response | kept "
                     f"{len(f.kept_sources)} of {f.n_sources} sources) = {f.ll_kept:.3f}"
                     + ("" if f.ll_empty is None else f", LL(response | no context) = {f.ll_empty:.3f}") + " nats")
    if f.warning:
        lines.append(f"WARNING: {f.warning}")
    return lines


def report_faithfulness(result: ContextResult, as_json: bool) -> None:
    """Print the faithfulness report on stderr (with --json only the warning: the JSON holds the numbers)."""
    lines = faithfulness_lines(result)
    for line in lines if not as_json else [x for x in lines if x.startswith("WARNING")]:
        sys.stderr.write(line + "\n")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `context` to the app and `context` to the bench group."""

    @app.command("context")
    def context(
        ctx: typer.Context,
        model: Annotated[str, typer.Option(help=f"Target model: {MODEL_HELP}")],
        context_file: Annotated[Path, typer.Option(help="UTF-8 text file with the context.")],
        query: Annotated[str, typer.Option(help="The question the response answers.")],
        response: Annotated[str | None, typer.Option(help="Response to explain; default: the model's greedy answer.")] = None,
        method: Annotated[str, typer.Option(help=choices_help(METHOD_HELP, method_names()))] = "cached",
        proxy: Annotated[str | None, typer.Option(help="Proxy model for proxy methods: a name or directory (same tokenizer), "
                                                      "or early-exit:K (the target's first K blocks).")] = None,
        level: Annotated[str, typer.Option(help="paragraph|sentence|word.")] = "sentence",
        top_k: Annotated[int, typer.Option(help="Paragraphs kept (hierarchical) / sources confirmed (proxy-pruning).")] = 3,
        batch_size: Annotated[int, typer.Option(help="Ablated prompts per forward pass.")] = 8,
        n_ablations: Annotated[int, typer.Option(help="Random ablations for contextcite.")] = 64,
        seed: Annotated[int, typer.Option(help="Seed for generation sampling and contextcite masks.")] = 0,
        max_new_tokens: MaxNewTokens = 32,
        option: ContextOption = None,
        chat_template: ChatTemplate = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Attribute a response to the sources of its context (exact LOO made fast, and baselines)."""
        from attrilens.context import ContextAttributor

        options = method_options(ctx, method, {"top_k": top_k, "n_ablations": n_ablations, "seed": seed}, option)
        text = _read_context(context_file)
        target = load_lm(model, chat_template)
        proxy_lm = load_proxy(proxy, target)
        attributor = ContextAttributor(target, proxy_lm, method=method, level=level, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, **options)
        result = attributor.attribute(text, query, response)
        emit(result, as_json)
        report_faithfulness(result, as_json)

    @bench.command("context")
    def bench_context(
        model: Annotated[str | None, typer.Option(help=f"Target model (default: the demo target). {MODEL_HELP}")] = None,
        proxy: Annotated[list[str] | None, typer.Option(
            help="Proxy model: a name, a directory or early-exit:K (default: the demo proxy). Repeat it for one set "
                 "of proxy rows per proxy, e.g. --proxy early-exit:6 --proxy early-exit:10.")] = None,
        world: Annotated[Path | None, typer.Option(help="World directory with episodes.jsonl (default: the demo world).")] = None,
        episodes: Annotated[int, typer.Option(help="Answered held-out episodes (with >= 20 sentences) to attribute.")] = 50,
        screen: Annotated[int | None, typer.Option(help="Held-out episodes the model answers greedily first "
                                                        "(default: twice --episodes).")] = None,
        quick: Annotated[bool, typer.Option(help="A fast smoke run: 6 episodes, fewer settings.")] = False,
        peers: Annotated[bool, typer.Option("--peers/--no-peers", help="Add captum and context-cite rows when "
                                                                       "installed (the bench extra).")] = True,
        batch_size: Annotated[int, typer.Option(help="Ablated prompts per forward pass.")] = 8,
        max_new_tokens: Annotated[int | None, typer.Option(help="Most tokens of a greedy answer (default: 8, or 32 "
                                                                "with a chat template).")] = None,
        chat_template: ChatTemplate = None,
        out: Annotated[Path | None, typer.Option(help="Also write context-bench.md and context-bench.json here.")] = None,
        threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Faithfulness to exact target LOO and cost ratios vs naive LOO, for every method, setting and peer."""
        from attrilens.bench.context import run_benchmark

        target = load_lm(model, chat_template) if model is not None else None
        proxies = None
        if proxy:
            if target is None:
                raise AttrilensError("--proxy needs --model (the demo target comes with its own proxy).")
            proxies = {p: load_proxy(p, target) for p in proxy}
        report = run_benchmark(model=target, proxy=proxies, world=world, n_episodes=episodes, quick=quick,
                               threads=threads, n_screen=screen, peers=peers, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
        sys.stdout.write(report.to_json() + "\n" if as_json else report.to_text())
        if out is not None:
            report.write(out)
