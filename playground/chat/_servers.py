"""Helpers shared by the playground's browser test and screenshot script.

* :func:`serve_app` runs an ASGI app with uvicorn in a thread on a free loopback port;
* :func:`serve_static` serves a folder with ``http.server`` in a thread on a free loopback port;
* :func:`ensure_chromium` returns the Debian Chromium binary, installing it with apt-get if missing;
* :data:`CHROMIUM_ARGS` are the flags Chromium is started with.

Playwright for Python drives that Chromium (``executable_path=``); no browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import uvicorn

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
FRONTEND_DIR = Path(__file__).resolve().parent


@contextlib.contextmanager
def serve_app(app: Any, host: str = "127.0.0.1", startup_timeout: float = 20.0) -> Iterator[str]:
    """Run ``app`` (lifespan included) with uvicorn in a background thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="playground-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the playground backend did not start (see the log above)")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_static(directory: Path = FRONTEND_DIR, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``directory`` over HTTP in a background thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with ThreadingHTTPServer((host, 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, name="playground-frontend", daemon=True)
        thread.start()
        try:
            yield f"http://{host}:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            thread.join(10)


def ensure_chromium(timeout: float = 900.0) -> str:
    """Return ``/usr/bin/chromium``, installing Debian's ``chromium`` package first if it is missing.

    Raises:
        RuntimeError: It is missing and could not be installed (the message says why and what to run).
    """
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{CHROMIUM} is missing and apt-get is not available: install Chromium at that path")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise RuntimeError(f"{CHROMIUM} is missing; as root, run: apt-get update && apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            done = subprocess.run(
                [*sudo, *command], env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"installing Chromium failed: {' '.join(command)}: {e}") from e
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise RuntimeError(f"installing Chromium failed: {' '.join(command)} exited {done.returncode}:\n{tail}")
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM
