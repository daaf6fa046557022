"""CLI verbs of the Patchscopes lens: `attrilens inspect ...` and `attrilens bench inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attrilens.errors import AttrilensError
from attrilens.lm import LM

PRESETS = ("logit_lens", "tuned_lens", "token_identity", "token_identity_bare", "attribute_extraction",
           "entity_description", "cross_model", "multi_hop", "custom")


def _model_dir(model: Path | None) -> Path:
    from attrilens.demo.paths import demo_model_dir

    return model if model is not None else demo_model_dir("target")


def _world_texts(world: Path | None, n: int = 200) -> list[str]:
    from attrilens.demo.paths import demo_world_dir
    from attrilens.jsonl import load_jsonl

    world = world if world is not None else demo_world_dir()
    return [r["text"] for r in load_jsonl(Path(world) / "corpus.jsonl")[:n]]


def run_inspect(
    model: Path | LM | None, prompt: str, preset: str | None = None, layer: int | None = None, position: int | None = None,
    target_model: Path | None = None, target_prompt: str | None = None, target_layer: int | None = None,
    target_position: int = -1, relation: str | None = None, lens: Path | None = None, world: Path | None = None,
    top_k: int = 5, max_new_tokens: int = 0,
):
    """The `inspect` verb as a function (CLI, web app and tests share it); `model` is a directory or a loaded LM."""
    from attrilens.inspect import presets
    from attrilens.inspect.patchscope import Patchscope, sweep

    preset = preset or ("custom" if target_prompt or target_model else "logit_lens")
    if preset not in PRESETS:
        raise AttrilensError(f"Unknown preset {preset!r}. Choose from {', '.join(PRESETS)}.")
    lm = model if isinstance(model, LM) else LM.from_pretrained(_model_dir(model))
    layers = None if layer is None else [layer]
    positions = None if position is None else [position]
    if preset == "logit_lens":
        return presets.logit_lens(lm, prompt, layers=layers, positions=positions, top_k=top_k)
    if preset == "tuned_lens":
        if lens is None:
            raise AttrilensError("The tuned_lens preset needs --lens FILE (a lens trained with TunedLens.train).")
        return presets.tuned_lens(lm, prompt, lens, layers=layers, positions=positions, top_k=top_k)
    if preset in ("token_identity", "token_identity_bare"):
        return presets.token_identity(lm, prompt, bare=preset.endswith("bare"), layers=layers, positions=positions,
                                      top_k=top_k, max_new_tokens=max_new_tokens)
    if preset == "attribute_extraction":
        return presets.attribute_extraction(lm, prompt, relation if target_prompt is None else None, template=target_prompt,
                                            layers=layers, position=-1 if position is None else position, top_k=top_k,
                                            max_new_tokens=max_new_tokens or 6)
    if preset == "entity_description":
        return presets.entity_description(lm, prompt, layers=layers, position=-1 if position is None else position,
                                          world_dir=world, max_new_tokens=max_new_tokens or 16, top_k=top_k)
    if preset == "multi_hop":
        if target_prompt is None or layer is None or target_layer is None:
            raise AttrilensError("multi_hop needs --target-prompt (with an 'x'), --layer and --target-layer.")
        return presets.multi_hop(lm, prompt, target_prompt, layer=layer, target_layer=target_layer,
                                 position=-1 if position is None else position, top_k=top_k,
                                 max_new_tokens=max_new_tokens or 6)
    target = LM.from_pretrained(target_model) if target_model is not None else lm
    if preset == "cross_model":
        if target_model is None:
            raise AttrilensError("cross_model needs --target-model DIR (the model the proxy's states are read through).")
        return presets.cross_model(lm, target, prompt, texts=_world_texts(world), positions=positions, top_k=top_k)
    mapping = None
    if target.d_model != lm.d_model:
        mapping = presets.fit_cross_model(lm, target, _world_texts(world))
    ps = Patchscope(lm, target, mapping)
    if mapping is not None:
        pairs = sorted(mapping.maps)
        return sweep(ps, prompt, target_prompt, over="layer_layer", layers=[a for a, _ in pairs] if layer is None else layers,
                     positions=positions, target_layers=[b for _, b in pairs] if target_layer is None else [target_layer],
                     target_position=target_position, top_k=top_k, max_new_tokens=max_new_tokens, preset="custom")
    return sweep(ps, prompt, target_prompt, layers=layers, positions=positions,
                 target_layers=None if target_layer is None else [target_layer], target_position=target_position,
                 top_k=top_k, max_new_tokens=max_new_tokens, preset="custom")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `inspect` to the app and `inspect` to the bench group."""

    @app.command("inspect")
    def inspect_cmd(
        prompt: Annotated[str, typer.Option(help="Source prompt whose hidden states are inspected.")],
        model: Annotated[Path | None, typer.Option(help="Source model directory (default: the demo target model).")] = None,
        preset: Annotated[str | None, typer.Option(help=f"One of {', '.join(PRESETS)}.")] = None,
        layer: Annotated[int | None, typer.Option(help="Source layer ℓ (0 = embeddings, L = last block); default all.")] = None,
        position: Annotated[int | None, typer.Option(help="Source position i (negative counts from the end); default all.")] = None,
        target_model: Annotated[Path | None, typer.Option(help="Target model directory (cross-model patching).")] = None,
        target_prompt: Annotated[str | None, typer.Option(help="Target prompt T (default: the source prompt).")] = None,
        target_layer: Annotated[int | None, typer.Option(help="Target layer ℓ* (default: ℓ).")] = None,
        target_position: Annotated[int, typer.Option(help="Target position i* (default: last token).")] = -1,
        relation: Annotated[str, typer.Option(help="Fact-world relation for attribute_extraction.")] = "capital",
        lens: Annotated[Path | None, typer.Option(help="Tuned-lens safetensors file for the tuned_lens preset.")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact-world directory (descriptions, cross-model fitting).")] = None,
        top_k: Annotated[int, typer.Option(help="Top tokens per cell.")] = 5,
        max_new_tokens: Annotated[int, typer.Option(help="Also generate this many tokens from each patched target.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print only the result JSON.")] = False,
    ) -> None:
        """Patchscopes: patch hidden states of the prompt into a target prompt and read what they encode."""
        from attrilens.cli.output import emit

        emit(run_inspect(model, prompt, preset, layer, position, target_model, target_prompt, target_layer,
                         target_position, relation, lens, world, top_k, max_new_tokens), as_json)

    @bench.command("inspect")
    def bench_inspect(
        model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo target model).")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact-world directory (default: the demo world).")] = None,
        quick: Annotated[bool, typer.Option(help="Fewer pairs and steps (a smoke run).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the tables as JSON only.")] = False,
    ) -> None:
        """Patchscopes benchmark: precision@1/surprisal by layer, attribute extraction, multi-hop, speed."""
        from attrilens.bench.patchscopes import main

        main(model=model, world=world, quick=quick, as_json=as_json)
