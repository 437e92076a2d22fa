"""The chat playground in a real browser: headless Chromium (Debian's) driven by Playwright for Python.

The static page and the FastAPI backend run in threads on free ports; the backend stores into a
fresh database on the test server. The first test chats twice, watches the reply stream in, reloads
and finds the conversation again, reads the statistics panel, gives feedback (offered only once
there is an answer), and then checks the session document in MongoDB. The second one checks how
tool results read: a value, a table, collapsed JSON that opens on a click.

Chromium is installed with apt-get when ``/usr/bin/chromium`` is missing. If that is impossible the
test fails: a browser test that skips proves nothing.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from pymongo import MongoClient

from mongodb_session_manager.mongodb_session_repository import DEFAULT_COLLECTION_NAME, MongoDBSessionRepository
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
def token_delay() -> float:
    return TOKEN_DELAY


@pytest.fixture
def playground(mongodb_uri: str, database_name: str, token_delay: float) -> Iterator[dict[str, str]]:
    """The frontend and a backend on the test server; yields both URLs and the page address."""
    with serve_static() as frontend:
        model = OfflineDemoModel(stream_delay=token_delay)
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
    assert page.get_by_test_id("feedback").is_hidden()  # nothing to rate yet
    assert page.get_by_test_id("thumb-up").is_hidden() and page.get_by_test_id("thumb-down").is_hidden()

    # Two prompts; the first reply is seen growing word by word before it completes.
    growth = send_and_watch(page, PROMPTS[0])
    assert len(growth) >= 2 and growth == sorted(growth), f"no visible streaming, lengths seen: {growth}"
    assert page.get_by_test_id("thumb-up").is_visible() and page.get_by_test_id("thumb-down").is_visible()
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
    assert page.get_by_test_id("thumb-down").is_visible()  # a restored conversation with answers can be rated

    # The statistics panel shows tokens and latency for each turn.
    page.get_by_test_id("stats-toggle").click()
    rows = page.get_by_test_id("turn-row")
    rows.nth(1).wait_for(timeout=TIMEOUT_MS)
    assert rows.count() == 2
    for cells in (rows.nth(i).locator("td").all_inner_texts() for i in range(2)):
        _, tokens_in, tokens_out, total, model_latency, turn_time = cells
        assert int(total.replace(",", "")) == int(tokens_in.replace(",", "")) + int(tokens_out.replace(",", "")) > 0
        assert model_latency.endswith(("ms", " s")) and turn_time.endswith(("ms", " s"))
    assert PROMPTS[0] in page.get_by_test_id("session-about").inner_text()  # the title
    panel = page.get_by_test_id("stats-panel").inner_text()
    assert "chat playground" not in panel and "_title" not in panel  # bookkeeping is no fact about the user

    # Thumbs down with a comment.
    page.get_by_test_id("thumb-down").click()
    page.get_by_test_id("feedback-comment").fill("The second answer was too short.")
    page.get_by_test_id("feedback-submit").click()
    page.get_by_text("Thanks! Feedback stored.").wait_for(timeout=TIMEOUT_MS)
    page.get_by_test_id("feedback-entry").wait_for(timeout=TIMEOUT_MS)

    # A new chat has nothing to rate, nor has it once restored.
    page.get_by_test_id("new-chat").click()
    page.get_by_test_id("empty").wait_for(timeout=TIMEOUT_MS)
    assert page.get_by_test_id("chat").get_attribute("data-session-id") not in (None, "", session_id)
    assert page.get_by_test_id("feedback").is_hidden()
    page.reload()
    page.get_by_test_id("empty").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("document.getElementById('chat').dataset.ready === 'true'")
    assert page.get_by_test_id("feedback").is_hidden()

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
    assert document["metadata"] == {"_client": "chat playground", "_title": PROMPTS[0]}


@pytest.mark.parametrize("token_delay", [0.005])
def test_tool_results_read_as_a_value_a_table_or_collapsed_json(
    browser: Browser, playground: dict[str, str], mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(playground["page"])
    page.get_by_test_id("empty").wait_for(timeout=TIMEOUT_MS)
    session_id = page.get_by_test_id("chat").get_attribute("data-session-id")
    assert session_id

    send_and_watch(page, "What is 6 * 7?")
    send_and_watch(page, "My name is Ada and my city is Lisbon.")
    assert bubbles(page, "tool") == [
        'calculator(expression="6 * 7")',
        "→ 42",
        'manage_metadata(action="set", metadata={"name": "Ada", "city": "Lisbon"})',
        "→ updated: city, name",
    ]

    # What the agent knows: a short table of the user's facts, none of the backend's bookkeeping.
    send_and_watch(page, "What do you know about me?")
    table = page.get_by_test_id("result-table")
    assert table.count() == 1
    assert table_rows(table) == [["field", "value"], ["name", "Ada"], ["city", "Lisbon"]]
    assert bubbles(page, "assistant")[-1].endswith("I know: city = 'Lisbon', name = 'Ada'.")

    # A fact that is no flat value: the result is collapsed JSON, opened by a click.
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repository:
        repository.update_metadata(session_id, {"trip": {"city": "Porto", "nights": 3}})
    send_and_watch(page, "What do you know about me?")
    details = page.get_by_test_id("result-details")
    assert details.count() == 1
    assert details.locator("summary").inner_text() == "→ metadata: object with 3 fields"
    assert details.get_attribute("open") is None
    assert details.locator("pre").is_hidden()
    details.locator("summary").click()
    details.locator("pre").wait_for(state="visible", timeout=TIMEOUT_MS)
    facts = {"name": "Ada", "city": "Lisbon", "trip": {"city": "Porto", "nights": 3}}
    assert json.loads(details.locator("pre").inner_text()) == facts
    assert details.locator("pre").inner_text() == json.dumps(facts, indent=2)  # pretty

    # The stored conversation reads the same after a reload.
    shown = bubbles(page, "tool")
    page.reload()
    page.locator('[data-testid="message"][data-role="assistant"]').nth(3).wait_for(timeout=TIMEOUT_MS)
    assert bubbles(page, "tool")[:4] == shown[:4]
    assert table_rows(page.get_by_test_id("result-table")) == [["field", "value"], ["name", "Ada"], ["city", "Lisbon"]]
    assert page.get_by_test_id("result-details").locator("summary").inner_text() == "→ metadata: object with 3 fields"
    assert errors == []
    page.close()


def table_rows(table: Any) -> list[list[str]]:
    rows = table.locator("tr")
    return [rows.nth(i).locator("th, td").all_inner_texts() for i in range(rows.count())]
