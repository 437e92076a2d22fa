"""``mongodb-session-manager``: the command line for operators of a session store.

``list``, ``show``, ``export``/``import`` (our lossless JSON Lines format, and Strands'
``FileSessionManager`` layout), ``verify [--repair]``, ``delete``, ``stats`` and ``migrate-snapshots``.
Run ``mongodb-session-manager --help`` (or ``python -m mongodb_session_manager --help``). The
commands that only read never write anything, index creation included, so read-only credentials
suffice for them.
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
