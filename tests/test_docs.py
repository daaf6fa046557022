"""docs/architecture.md's examples (adding a method to each lens) run as written on the shipped tiny model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_page_has_one_example_per_lens():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("block", BLOCKS, ids=["context", "training", "inspect"])
def test_architecture_example_runs(block: str):
    exec(compile(block, str(PAGE), "exec"), {})  # noqa: S102 - our own documentation
