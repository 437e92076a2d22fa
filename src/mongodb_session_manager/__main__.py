"""``python -m mongodb_session_manager``: the operators' command line (see :mod:`mongodb_session_manager.cli`)."""

from mongodb_session_manager.cli import main

raise SystemExit(main())
