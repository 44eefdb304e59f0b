"""The playground against the guarded server: it asks for the API key, and works with it."""

from __future__ import annotations

from typing import Any

from audiotext.server.launcher import ServerProcess
from tests.e2e.test_playground import DEMO, ask, browser_factory, playground, shown

from .conftest import API_KEY

__all__ = ["browser_factory"]  # the fixture, shared with the e2e playground test


def test_the_page_asks_for_the_key_and_answers_with_it(
    guarded: ServerProcess, browser_factory: Any
) -> None:
    page = browser_factory().new_page()
    page.goto(playground(guarded))
    page.wait_for_selector("#key-section:visible")
    page.set_input_files("#file", str(DEMO))
    ask(page)
    assert shown(page)["error"].startswith("401: ")  # no key yet
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    ask(page)
    seen = shown(page)
    assert seen["error"] == "" and seen["answer"]
    assert seen["windows"] == "1"
