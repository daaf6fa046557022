"""A training run's resumable state in one safetensors file: trainable weights, AdamW moments and steps, and a
JSON `state` (step, settings, loss curve…) in its metadata; written atomically so a crash leaves the last one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_resume(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write the trainable parameters, their AdamW state and `state` to `path` (via a temporary file)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in _trainable(model).items():
        tensors[f"model.{name}"] = p.detach().contiguous()
        st = opt.state.get(p)
        if st:
            tensors[f"exp_avg.{name}"] = st["exp_avg"].contiguous()
            tensors[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].contiguous()
            tensors[f"step.{name}"] = torch.as_tensor(st["step"]).reshape(1).clone()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    os.replace(tmp, path)


def load_resume(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Load what `save_resume` wrote into `model` and `opt`; return its `state`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        keys = set(f.keys())
        with torch.no_grad():
            for name, p in _trainable(model).items():
                p.copy_(f.get_tensor(f"model.{name}"))
                if f"exp_avg.{name}" in keys:
                    opt.state[p] = {"step": f.get_tensor(f"step.{name}").reshape(()),
                                    "exp_avg": f.get_tensor(f"exp_avg.{name}"),
                                    "exp_avg_sq": f.get_tensor(f"exp_avg_sq.{name}")}
    return state
