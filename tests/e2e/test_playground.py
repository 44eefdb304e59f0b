"""The playground at /playground, driven by headless Chromium (Debian's `chromium`, through
Playwright) against the real server: upload, recording from a fake microphone fed from a
speech file, and an error. Screenshots are kept in build/test-artifacts/."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from audiotext.server.launcher import ServerProcess
from tests.conftest import DATA, load_clip

ARTIFACTS = Path(__file__).parents[2] / "build" / "test-artifacts"
DEMO = DATA / "speech_demo.flac"
QUESTION = "What does the person say?"
MAX_TOKENS = 12
# Answers stream in within this (first start of the page's code paths included).
ANSWER_TIMEOUT_MS = 120_000


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is missing: run `make install` (SYSTEM_TOOLS)"
    return path


@pytest.fixture(scope="module")
def browser_factory() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched: list[Any] = []

        def launch(*args: str) -> Any:
            browser = playwright.chromium.launch(executable_path=chromium(), args=list(args))
            launched.append(browser)
            return browser

        yield launch
        for browser in launched:
            browser.close()


def playground(server: ServerProcess) -> str:
    return server.base_url.removesuffix("/v1") + "/playground"


def ask(page: Any) -> None:
    page.fill("#instruction", QUESTION)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.click("#ask")
    page.wait_for_selector("#answer[data-done=true], #error:not(:empty)", timeout=ANSWER_TIMEOUT_MS)


def shown(page: Any) -> dict[str, str]:
    ids = ("answer", "error", "seconds", "windows", "ttft", "total")
    return {i: page.text_content(f"#{i}") or "" for i in ids}


def api_answer(server: ServerProcess, audio: Path) -> dict[str, Any]:
    """What the task endpoint answers the page's request, asked directly (greedy)."""
    body = {
        "audio": "data:audio/flac;base64," + base64.b64encode(audio.read_bytes()).decode(),
        "text": QUESTION,
        "parameters": {"max_new_tokens": MAX_TOKENS, "temperature": 0},
    }
    task = server.base_url.removesuffix("/v1") + "/v1/audio-text-to-text"
    reply = httpx.post(task, json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_the_page_is_self_contained(server: ServerProcess) -> None:
    page = httpx.get(playground(server), timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # No CDN, no external script, style or font: it works offline.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)


def test_upload_streams_the_answer_and_shows_what_was_heard(
    server: ServerProcess, browser_factory: Any
) -> None:
    expected = api_answer(server, DEMO)
    page = browser_factory().new_page()
    page.goto(playground(server))
    page.wait_for_function("document.getElementById('model').textContent !== '...'")
    assert page.text_content("#model") == "tiny"
    assert page.is_hidden("#key-section")  # this server has no API key
    page.set_input_files("#file", str(DEMO))
    assert page.is_visible("#player")
    assert page.get_attribute("#player", "src", timeout=5000).startswith("blob:")
    ask(page)
    seen = shown(page)
    page.screenshot(path=str(ARTIFACTS / "playground-upload.png"), full_page=True)
    assert seen["error"] == ""
    assert seen["answer"] == expected["generated_text"]
    assert float(seen["seconds"]) == pytest.approx(expected["audio"]["seconds"], abs=0.01)
    assert seen["windows"] == str(expected["audio"]["windows"])
    for timing in (seen["ttft"], seen["total"]):
        assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", timing), timing


def test_recording_from_the_microphone_is_heard(
    server: ServerProcess, browser_factory: Any, tmp_path: Path
) -> None:
    # Chromium's fake microphone plays this file (WAV only), looping.
    speech = tmp_path / "speech.wav"
    soundfile.write(speech, load_clip("6s"), 16000, subtype="PCM_16")
    browser = browser_factory(
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}",
    )
    page = browser.new_page()
    page.goto(playground(server))
    page.click("#record")
    page.wait_for_selector("#recording:visible")
    page.wait_for_timeout(2500)
    page.click("#record")
    page.wait_for_selector("#player:visible")
    ask(page)
    seen = shown(page)
    page.screenshot(path=str(ARTIFACTS / "playground-recording.png"), full_page=True)
    assert seen["error"] == ""
    assert seen["answer"]
    # About the 2.5 s recorded (MediaRecorder starts and stops with some slack).
    assert 1.5 <= float(seen["seconds"]) <= 5.0, seen
    assert seen["windows"] == "1"


def test_a_file_that_is_not_audio_shows_the_servers_message(
    server: ServerProcess, browser_factory: Any, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not audio\n" * 20)
    page = browser_factory().new_page()
    page.goto(playground(server))
    page.set_input_files("#file", str(notes))
    ask(page)
    seen = shown(page)
    page.screenshot(path=str(ARTIFACTS / "playground-error.png"), full_page=True)
    assert seen["error"].startswith("400: ")
    assert "audio" in seen["error"].lower()
    assert seen["answer"] == ""


def test_live_mode_holds_a_spoken_turn_over_realtime(
    server: ServerProcess, browser_factory: Any, tmp_path: Path
) -> None:
    # The fake microphone loops this file: speech, then silence long enough to end a turn.
    speech = tmp_path / "turn.wav"
    turn = load_clip("6s")
    soundfile.write(speech, np.concatenate([turn, np.zeros(32000, np.float32)]), 16000,
                    subtype="PCM_16")  # fmt: skip
    browser = browser_factory(
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}",
    )
    metrics_url = server.base_url.removesuffix("/v1") + "/metrics"
    heard = 'audiotext_audio_seconds_total{route="/v1/realtime"}'

    def realtime_seconds() -> float:
        for line in httpx.get(metrics_url, timeout=30).text.splitlines():
            if line.startswith(heard):
                return float(line.split()[-1])
        return 0.0

    before = realtime_seconds()
    page = browser.new_page()
    page.goto(playground(server))
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.click("#live")
    page.wait_for_selector(".turn[data-role=assistant][data-done=true]", timeout=ANSWER_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "playground-live.png"), full_page=True)
    page.click("#live")
    user = page.locator(".turn[data-role=user]").first
    answer = page.locator(".turn[data-role=assistant][data-done=true]").first
    assert page.text_content("#error") == ""
    # The 6 s of speech are one turn (prefix padding and the silence that ends it around).
    assert 5.5 <= float(user.get_attribute("data-seconds") or 0) <= 8.0
    assert answer.get_attribute("data-status") in ("completed", "incomplete")
    assert answer.text_content()
    # ... and the server's media connector heard it on the realtime route.
    assert realtime_seconds() - before >= 5.5
