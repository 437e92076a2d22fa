"""The chat playground in a real browser: headless Chromium (Debian's) driven by Playwright for Python.

The static page and the FastAPI backend run in threads on free ports; the backend stores into a
fresh database on the test server. The test chats twice, watches the reply stream in, reloads and
finds the conversation again, reads the statistics panel, gives feedback, and then checks the
session document in MongoDB.

Chromium is installed with apt-get when ``/usr/bin/chromium`` is missing. If that is impossible the
test fails: a browser test that skips proves nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from pymongo import MongoClient

from mongodb_session_manager.mongodb_session_repository import DEFAULT_COLLECTION_NAME
from playground.chat._servers import CHROMIUM_ARGS, ensure_chromium, serve_app, serve_static
from playground.chat.backend_fastapi_streaming import AGENT_ID, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from _local import OfflineDemoModel

PROMPTS = ["Hello! I'm Ada and I'm planning a party.", "What is (17 + 25) * 2?"]
TOKEN_DELAY = 0.05  # seconds between streamed words: slow enough to watch, fast enough for CI
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return ensure_chromium()
    except RuntimeError as e:
        pytest.fail(
            f"Chromium is needed for the playground browser test and could not be installed: {e}", pytrace=False
        )


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def playground(mongodb_uri: str, database_name: str) -> Iterator[dict[str, str]]:
    """The frontend and a backend on the test server; yields both URLs and the page address."""
    with serve_static() as frontend:
        model = OfflineDemoModel(stream_delay=TOKEN_DELAY)
        app = create_app(mongodb_uri, database_name, lambda: model, allowed_origins=[frontend])
        with serve_app(app) as api:
            yield {"frontend": frontend, "api": api, "page": f"{frontend}/chat.html?api={api}"}


def bubbles(page: Page, role: str) -> list[str]:
    return page.locator(f'[data-testid="message"][data-role="{role}"] [data-testid="bubble"]').all_inner_texts()


def send_and_watch(page: Page, prompt: str) -> list[int]:
    """Send ``prompt`` and sample the length of the streaming reply until it completes."""
    replies_before = page.locator('[data-testid="message"][data-role="assistant"]').count()
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("send").click()
    reply = page.locator('[data-testid="message"][data-role="assistant"]').nth(replies_before)
    reply.wait_for(timeout=TIMEOUT_MS)
    lengths: list[int] = []
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        state = reply.evaluate("n => [n.dataset.streaming === 'true', n.querySelector('.bubble').textContent.length]")
        if not state[0]:
            break
        if state[1] and (not lengths or lengths[-1] != state[1]):
            lengths.append(state[1])
        time.sleep(0.02)
    else:
        pytest.fail(f"the reply to {prompt!r} was still streaming after {TIMEOUT_MS} ms")
    reply.get_by_test_id("caption").wait_for(timeout=TIMEOUT_MS)  # the "done" event arrived
    return lengths


def test_chat_stream_reload_stats_and_feedback(
    browser: Browser, playground: dict[str, str], mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    foreign: list[str] = []
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith((playground["frontend"], playground["api"])) else foreign.append(request.url)
        ),
    )
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(playground["page"])
    page.get_by_test_id("empty").wait_for(timeout=TIMEOUT_MS)
    session_id = page.get_by_test_id("chat").get_attribute("data-session-id")
    assert session_id

    # Two prompts; the first reply is seen growing word by word before it completes.
    growth = send_and_watch(page, PROMPTS[0])
    assert len(growth) >= 2 and growth == sorted(growth), f"no visible streaming, lengths seen: {growth}"
    send_and_watch(page, PROMPTS[1])
    replies = bubbles(page, "assistant")
    assert len(replies) == 2
    assert PROMPTS[0] in replies[0]
    assert replies[1].endswith("The calculator says: 84.")
    assert bubbles(page, "tool") == ['calculator(expression="(17 + 25) * 2")', "→ 84"]

    # A reload keeps the session and shows the stored conversation.
    page.reload()
    page.locator('[data-testid="message"][data-role="assistant"]').nth(1).wait_for(timeout=TIMEOUT_MS)
    assert page.get_by_test_id("chat").get_attribute("data-session-id") == session_id
    assert bubbles(page, "user") == PROMPTS
    assert bubbles(page, "assistant") == replies
    assert bubbles(page, "tool") == ['calculator(expression="(17 + 25) * 2")', "→ 84"]
    assert page.get_by_test_id("caption").count() == 2

    # The statistics panel shows tokens and latency for each turn.
    page.get_by_test_id("stats-toggle").click()
    rows = page.get_by_test_id("turn-row")
    rows.nth(1).wait_for(timeout=TIMEOUT_MS)
    assert rows.count() == 2
    for cells in (rows.nth(i).locator("td").all_inner_texts() for i in range(2)):
        _, tokens_in, tokens_out, total, model_latency, turn_time = cells
        assert int(total.replace(",", "")) == int(tokens_in.replace(",", "")) + int(tokens_out.replace(",", "")) > 0
        assert model_latency.endswith(("ms", " s")) and turn_time.endswith(("ms", " s"))
    assert PROMPTS[0] in page.get_by_test_id("metadata").inner_text()  # the title

    # Thumbs down with a comment.
    page.get_by_test_id("thumb-down").click()
    page.get_by_test_id("feedback-comment").fill("The second answer was too short.")
    page.get_by_test_id("feedback-submit").click()
    page.get_by_text("Thanks! Feedback stored.").wait_for(timeout=TIMEOUT_MS)
    page.get_by_test_id("feedback-entry").wait_for(timeout=TIMEOUT_MS)

    assert errors == []
    assert foreign == [], f"the page fetched something from elsewhere: {foreign}"
    page.close()

    # What the browser did is what MongoDB holds.
    document = mongo_client[database_name][DEFAULT_COLLECTION_NAME].find_one({"_id": session_id})
    assert document is not None
    messages = document["agents"][AGENT_ID]["messages"]
    texts = [
        (m["message"]["role"], "".join(b.get("text", "") for b in m["message"]["content"]))
        for m in messages
        if any("text" in b for b in m["message"]["content"])
    ]
    assert texts == [("user", PROMPTS[0]), ("assistant", replies[0]), ("user", PROMPTS[1]), ("assistant", replies[1])]
    with_metrics = [m for m in messages if "event_loop_metrics" in m]
    assert [m["message"]["role"] for m in with_metrics] == ["assistant", "assistant"]
    assert [m["message"]["content"][0]["text"] for m in with_metrics] == replies
    for m in with_metrics:
        metrics = m["event_loop_metrics"]
        assert metrics["usage"]["totalTokens"] > 0
        assert metrics["latency_ms"] > 0
    assert with_metrics[1]["event_loop_metrics"]["tool_usage"]["calculator"]["call_count"] == 1
    assert [(f["rating"], f["comment"]) for f in document["feedbacks"]] == [
        ("down", "The second answer was too short.")
    ]
    assert document["metadata"] == {"client": "chat playground", "title": PROMPTS[0]}
