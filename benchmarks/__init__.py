"""The benchmark suite of mongodb-session-manager: ``make bench`` (``python -m benchmarks``).

What one agent restore, one turn, one append and one per-request manager cost, measured against a
real MongoDB wire-protocol server (``MONGODB_URI``):

* MongoDB commands and the bytes sent and received, counted with pymongo's ``CommandListener``
  (exact and the same on any machine);
* median wall-clock times, compared within the same run with two baselines: the raw pymongo floor
  (one ``find_one`` / one ``update_one`` on the same server) and Strands' ``FileSessionManager`` on
  local disk doing the same conversation;
* for long sessions, most of whose history has moved to the overflow collection, and for a session
  with images stored outside its document: what restoring a window reads, against the size of the
  history, and what appending costs when it does and does not move old messages out.

It prints the tables and writes them, with the machine and server they were measured on, to
``docs/benchmarks.md``. Nothing here is part of the pass/fail test run: the deterministic command
counts are asserted in ``tests/integration/test_cost_targets.py`` and ``test_restore_cost.py``.
"""
