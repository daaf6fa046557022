"""Browser fixtures: Debian's chromium driven by Playwright (never `playwright install`); a page that records errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pages import ARGS, CHROMIUM, Watched  # noqa: E402


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: the browser tests need it. "
                    "Run `sh scripts/install_chromium.sh` (apt-get install chromium) and rerun.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def watched(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    w = Watched(context.new_page())
    yield w
    context.close()
