"""Regenerate ``docs/playground.png``: the playground mid-conversation, a reply still streaming.

Three finished turns show the three tool results a user meets first: a fact noted, a calculator
value, and what the agent knows as a small table.

Runs the backend and the static page on free ports (storage: ``MONGODB_URI`` or the embedded local
server, in a throwaway database that is dropped afterwards), drives Debian's Chromium with
Playwright for Python, and saves the screenshot. Chromium is installed with apt-get if missing.

    uv run python playground/chat/screenshot.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from playwright.sync_api import sync_playwright
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from _local import OfflineDemoModel, mongodb_uri
from _servers import CHROMIUM_ARGS, ensure_chromium, serve_app, serve_static
from backend_fastapi_streaming import create_app

OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
PROMPTS = [
    "Hi! My name is Ada and my city is Lisbon.",
    "We're adding 3 tables of 6. How many seats is 14 + 3 * 6?",
    "What do you know about me?",
]
STREAMING_PROMPT = "Great, thanks! We would like a vegetarian menu, please."


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    chromium = ensure_chromium()
    database = f"playground_screenshot_{uuid.uuid4().hex[:8]}"
    model = OfflineDemoModel(stream_delay=0.01)  # fast for the finished turns, slow for the one caught streaming
    with mongodb_uri() as uri, serve_static() as frontend:
        app = create_app(uri, database, lambda: model, allowed_origins=[frontend])
        try:
            with serve_app(app) as api, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
                page.goto(f"{frontend}/chat.html?api={api}")
                page.get_by_test_id("empty").wait_for()
                page.get_by_test_id("stats-toggle").click()
                for i, prompt in enumerate(PROMPTS, start=1):
                    page.get_by_test_id("prompt").fill(prompt)
                    page.get_by_test_id("send").click()
                    page.get_by_test_id("caption").nth(i - 1).wait_for()
                page.get_by_test_id("turn-row").nth(len(PROMPTS) - 1).wait_for()
                page.get_by_test_id("thumb-up").click()
                page.get_by_test_id("feedback-comment").fill("Right answer, and quick.")
                page.get_by_test_id("feedback-submit").click()
                page.get_by_test_id("feedback-entry").wait_for()
                model.stream_delay = 0.25
                page.get_by_test_id("prompt").fill(STREAMING_PROMPT)
                page.get_by_test_id("send").click()
                reply = page.locator('[data-testid="message"][data-role="assistant"]').nth(len(PROMPTS))
                deadline = time.monotonic() + 20
                while len(reply.inner_text()) < 45 and time.monotonic() < deadline:
                    time.sleep(0.05)
                output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(output), animations="disabled")  # the cursor shows, not its blink
                page.get_by_test_id("caption").nth(len(PROMPTS)).wait_for(timeout=30_000)
                browser.close()
        finally:
            with MongoClient(uri) as client:
                client.drop_database(database)
    print(f"saved {output}")


if __name__ == "__main__":
    main()
