"""CLI verbs of the Patchscopes lens: `attrilens inspect ...` and `attrilens bench inspect`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attrilens.cli.loading import MODEL_HELP, ChatTemplate
from attrilens.cli.options import option_flag
from attrilens.cli.output import JsonFlag
from attrilens.lm import LM
from attrilens.options import parse_assignments, parse_texts
from attrilens.patchscopes import InspectResult, presets

InspectOption = option_flag("layers=1,2", "inspect")


def _model(model: str | None) -> str:
    from attrilens.demo.paths import demo_model_dir

    return model if model is not None else str(demo_model_dir("target"))


def _world_texts(world: Path | None, n: int = 200) -> list[str]:
    from attrilens.demo.paths import demo_world_dir
    from attrilens.jsonl import load_jsonl

    world = world if world is not None else demo_world_dir()
    return [r["text"] for r in load_jsonl(Path(world) / "corpus.jsonl")[:n]]


def world_options(preset: type[presets.Preset], world: Path | None, with_target: bool, demo: bool) -> dict[str, Any]:
    """What the fact world gives a preset that takes it: its relation templates (with --world or on the demo
    model; real models keep the lens's English ones), its description shots (with --world), texts to fit
    cross-model maps on (with a target model; default: the demo world's corpus)."""
    from attrilens.workflows.world import RELATIONS, relation_template
    from attrilens.workflows.world.generate import description_shots

    takes = set(preset.option_names())
    out: dict[str, Any] = {}
    if "relations" in takes and (world is not None or demo):
        out["relations"] = {r: relation_template(r) for r in RELATIONS}
    if "shots" in takes and world is not None:
        out["shots"] = description_shots(world)
    if "texts" in takes and with_target:
        out["texts"] = _world_texts(world)
    return out


def run_inspect(model: str | Path | LM | None, prompt: str, preset: str | None = None, *,
                target_model: str | Path | None = None, world: Path | None = None,
                option_texts: dict[str, str] | None = None, **options: Any) -> InspectResult:
    """The `inspect` verb as a function: load the model(s) (`model` may be a loaded LM), add what the fact world
    gives the preset (unless `option_texts`, the `--option` text, sets it), and call `presets.run` with the other
    options (None = not given); `option_texts` names and types are checked before any model loads."""
    texts = dict(option_texts or {})
    target_prompt = options.get("target_prompt") or texts.get("target_prompt")
    cls = presets.preset_for(preset, target_prompt=target_prompt, target_model=target_model)
    parse_texts(cls.Options, texts, cls.option_owner())
    lm = model if isinstance(model, LM) else LM.from_pretrained(_model(None if model is None else str(model)))
    target = None if target_model is None else LM.from_pretrained(str(target_model))
    world_given = world_options(cls, world, target is not None, demo=model is None)
    given = {**{k: v for k, v in world_given.items() if k not in texts}, **options}
    return presets.run(cls.name, lm, prompt, target_model=target, option_texts=texts, **given)


def preset_help() -> str:
    """The --preset help: the default, then every registered preset with its summary."""
    return ("Patchscope preset (default: custom with --target-prompt or --target-model, else logit-lens). "
            + "; ".join(presets.PRESETS.describe().splitlines()) + ".")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `inspect` to the app and `inspect` to the bench group."""
    @app.command("inspect")
    def inspect_cmd(
        prompt: Annotated[str, typer.Option(help="Source prompt whose hidden states are inspected.")],
        model: Annotated[str | None, typer.Option(help=f"Source model (default: the demo target model). {MODEL_HELP}")] = None,
        preset: Annotated[str | None, typer.Option(help=preset_help())] = None,
        layer: Annotated[int | None, typer.Option(help="Source layer ℓ (0 = embeddings, L = last block); default all.")] = None,
        position: Annotated[int | None, typer.Option(help="Source position i (negative counts from the end); default all.")] = None,
        target_model: Annotated[str | None, typer.Option(help=f"Target model (cross-model patching). {MODEL_HELP}")] = None,
        target_prompt: Annotated[str | None, typer.Option(help="Target prompt T (default: the source prompt).")] = None,
        target_layer: Annotated[int | None, typer.Option(help="Target layer ℓ* (default: ℓ).")] = None,
        target_position: Annotated[int | None, typer.Option(help="Target position i* (default: last token).")] = None,
        relation: Annotated[str | None, typer.Option(help="Fact-world relation for attribute-extraction (default: capital).")] = None,
        lens: Annotated[Path | None, typer.Option(help="Tuned-lens safetensors file for the tuned-lens preset.")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact-world directory (descriptions, cross-model fitting).")] = None,
        top_k: Annotated[int | None, typer.Option(help="Top tokens per cell (default: 5).")] = None,
        max_new_tokens: Annotated[int | None, typer.Option(
            help="Also generate this many tokens from each patched target (default: the preset's).")] = None,
        option: InspectOption = None,
        chat_template: ChatTemplate = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Patchscopes: patch hidden states of the prompt into a target prompt and read what they encode."""
        from attrilens.cli.output import emit

        emit(run_inspect(model, prompt, preset, target_model=target_model, world=world, layer=layer, position=position,
                         target_prompt=target_prompt, target_layer=target_layer, target_position=target_position,
                         relation=relation, lens=lens, top_k=top_k, max_new_tokens=max_new_tokens,
                         chat_template=chat_template, option_texts=parse_assignments(option)), as_json)

    @bench.command("inspect")
    def bench_inspect(
        model: Annotated[str | None, typer.Option(help=f"Model (default: the demo target model). {MODEL_HELP}")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact-world directory (default: the demo world).")] = None,
        suite: Annotated[str | None, typer.Option(
            help="world: the fact world's texts and facts (default for the demo and local models); real: CPython "
                 "documentation text and countryinfo facts (default for a registered real model).")] = None,
        quick: Annotated[bool, typer.Option(help="Fewer pairs and steps (a smoke run).")] = False,
        out: Annotated[Path | None, typer.Option(help="Also write inspect-bench.md and inspect-bench.json here.")] = None,
        save_lens: Annotated[Path | None, typer.Option(help="Write the tuned lens trained here (safetensors).")] = None,
        threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Patchscopes benchmark: precision@1/surprisal by layer, attribute extraction vs a linear probe, speed
        (and multi-hop on a fact world)."""
        from attrilens.bench.patchscopes import run_benchmark

        report = run_benchmark(model, world, quick=quick, lens_out=save_lens, suite=suite, threads=threads)
        sys.stdout.write(report.to_json() + "\n" if as_json else report.to_text())
        if out is not None:
            report.write(out)
