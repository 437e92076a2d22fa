"""The ``mongodb-session-manager`` command line: argument parsing, the connection, errors and exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from pymongo.errors import PyMongoError

from .._secrets import scrub, uri_secrets
from .._validation import validate_tenant_id
from .._version import __version__
from ..errors import MongoDBSessionError, SessionValidationError
from ..mongodb_session_repository import (
    DEFAULT_BINARY_OFFLOAD_BYTES,
    DEFAULT_COLLECTION_NAME,
    DEFAULT_DATABASE_NAME,
    DEFAULT_OVERFLOW_THRESHOLD_BYTES,
    DEFAULT_REPAIR_GRACE,
)
from ._commands import COMMANDS
from ._context import FAILURE, PROBLEMS, USAGE, Context, UsageError

__all__ = ["build_parser", "main"]

PROG = "mongodb-session-manager"
_DESCRIPTION = """\
Look inside a mongodb-session-manager store without writing code: list and read conversations, move
sessions between databases and to or from Strands' file layout, check and repair storage, migrate.

The connection string comes from --uri or MONGODB_URI; it is never printed with its password.
Exit status: 0 ok, 1 problems found, 2 usage error, 3 the server failed or could not be reached."""


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes; given before or after the command's name."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument("--uri", default=default(None), help="MongoDB connection string (default: $MONGODB_URI)")
    group.add_argument(
        "--database", default=default(DEFAULT_DATABASE_NAME), help=f"database (default: {DEFAULT_DATABASE_NAME})"
    )
    group.add_argument(
        "--collection",
        default=default(DEFAULT_COLLECTION_NAME),
        help=f"sessions collection (default: {DEFAULT_COLLECTION_NAME})",
    )
    group.add_argument(
        "--overflow-collection", default=default(None), help="overflow collection (default: <collection>_overflow)"
    )
    group.add_argument(
        "--tenant",
        default=default(None),
        help="the tenant whose sessions to address (default: sessions stored without a tenant)",
    )
    group.add_argument(
        "--master-key-file",
        default=default(None),
        metavar="PATH",
        help="local master key (96 bytes, raw or base64) to read content encrypted at rest",
    )
    group.add_argument(
        "--key-vault",
        default=default("encryption.__keyVault"),
        metavar="NAMESPACE",
        help="key vault of encrypted content (default: encryption.__keyVault)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="bound on each MongoDB operation (default: the library's 10 s; 0: none)",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON for scripts")
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const=True,
        default=default(None),
        help="draw progress bars on stderr even when it is not a terminal",
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        default=default(None),
        help="never draw them",
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="log what the library does (-vv: its debug lines)"
    )


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--binary-offload-bytes",
        type=int,
        default=DEFAULT_BINARY_OFFLOAD_BYTES,
        help="store binaries larger than this outside the session document (default: the library's)",
    )
    parser.add_argument(
        "--overflow-threshold-bytes",
        type=int,
        default=DEFAULT_OVERFLOW_THRESHOLD_BYTES,
        help="move old messages out when a session document nears this size (default: the library's)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every command: ``mongodb-session-manager COMMAND --help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _connection_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=summary, description=summary)

    listing = command("list", "List sessions: dates, agents, message counts, size, metadata.")
    listing.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="only sessions whose metadata KEY equals VALUE (a string); KEY:=JSON compares a JSON value; repeatable",
    )
    listing.add_argument("--limit", type=int, default=100, help="at most this many sessions (default 100; 0: all)")
    listing.add_argument("--after", metavar="SESSION", help="start after this session id (the next page)")

    show = command("show", "Show a conversation as a person reads it, with metrics, metadata and feedback.")
    show.add_argument("session")
    show.add_argument("--agent", help="only this agent")
    show.add_argument("--last", type=int, metavar="N", help="only the last N messages of each agent")

    export = command("export", "Export sessions (JSON Lines: lossless; strands-files: FileSessionManager's layout).")
    export.add_argument("sessions", nargs="*", metavar="SESSION")
    export.add_argument("--all", action="store_true", help="every session")
    export.add_argument("--format", choices=["jsonl", "strands-files"], default="jsonl")
    export.add_argument("--out", metavar="PATH", help="file (jsonl; default stdout) or directory (strands-files)")
    export.add_argument("--overwrite", action="store_true", help="replace session directories that exist")

    imports = command("import", "Import sessions from an export or a directory written by FileSessionManager.")
    imports.add_argument("path", metavar="PATH", help="a JSON Lines file ('-': stdin) or a directory")
    imports.add_argument("--format", choices=["jsonl", "strands-files"], help="default: by PATH (directory or file)")
    imports.add_argument("--overwrite", action="store_true", help="replace sessions that exist in the target")
    _storage_options(imports)

    verify = command("verify", "Check sessions for damage; --repair fixes what can be fixed without losing data.")
    verify.add_argument("sessions", nargs="*", metavar="SESSION")
    verify.add_argument("--all", action="store_true", help="every session and the whole overflow collection (default)")
    verify.add_argument("--repair", action="store_true", help="repair what can be repaired, then check again")
    verify.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_REPAIR_GRACE.total_seconds(),
        metavar="SECONDS",
        help="leftovers younger than this may be writes in flight: noted, never removed "
        f"(default {int(DEFAULT_REPAIR_GRACE.total_seconds())})",
    )
    verify.add_argument("--quick", action="store_true", help="check that binary chunks exist without reading them")

    delete = command("delete", "Delete sessions with everything they keep outside their documents.")
    delete.add_argument("sessions", nargs="+", metavar="SESSION")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    stats = command("stats", "Collection sizes, the biggest sessions, the overflow collection's share.")
    stats.add_argument("--top", type=int, default=10, help="how many of the biggest sessions to show (default 10)")

    migrate = command("migrate-snapshots", "Write Strands snapshots of stored sessions into a MongoDBStorage.")
    migrate.add_argument("sessions", nargs="*", metavar="SESSION")
    migrate.add_argument("--all", action="store_true", help="every session")
    migrate.add_argument("--storage-database", help="the storage's database (default: --database)")
    migrate.add_argument("--storage-collection", default="storage", help="the storage's collection (default: storage)")
    migrate.add_argument("--overwrite", action="store_true", help="replace snapshots that exist")
    return parser


def _context(args: argparse.Namespace, out: TextIO, err: TextIO) -> Context:
    uri = args.uri or os.environ.get("MONGODB_URI")
    if not uri:
        raise UsageError("no connection string: pass --uri or set MONGODB_URI")
    client_options = {}
    if args.timeout is not None:
        if args.timeout < 0:
            raise UsageError("--timeout must be 0 (no bound) or more seconds")
        client_options["timeoutMS"] = int(args.timeout * 1000)
    repository_options: dict[str, Any] = {} if args.tenant is None else {"tenant_id": args.tenant}
    for name in ("binary_offload_bytes", "overflow_threshold_bytes"):
        if getattr(args, name, None) is not None:
            repository_options[name] = getattr(args, name)
    progress = args.progress if args.progress is not None else (not args.json and err.isatty())
    return Context(
        uri=uri,
        database=args.database,
        collection=args.collection,
        overflow_collection=args.overflow_collection,
        tenant=validate_tenant_id(args.tenant),
        master_key_file=args.master_key_file,
        key_vault=args.key_vault,
        client_options=client_options,
        repository_options=repository_options,
        json=args.json,
        progress=bool(progress),
        out=out,
        err=err,
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 problems found, 2 usage, 3 server failure).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
        out: Where results go (default stdout).
        err: Where errors, reports and progress go (default stderr).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2, already printed)
        return int(e.code or 0)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO, stream=err)
        logging.getLogger("pymongo").setLevel(logging.WARNING)  # its debug lines hold command bodies
    ctx: Context | None = None
    try:
        ctx = _context(args, out, err)
        return COMMANDS[args.command](ctx, args)
    except UsageError as e:
        _error(args, err, f"{PROG} {args.command}: {e}")
        return USAGE
    except SessionValidationError as e:
        _error(args, err, f"{PROG} {args.command}: {e}")
        return USAGE
    except MongoDBSessionError as e:
        _error(args, err, f"{PROG} {args.command}: {e}")
        # The server failing (the driver's error is the cause) is not a problem found in the data.
        return FAILURE if isinstance(e.__cause__, PyMongoError) else PROBLEMS
    except KeyboardInterrupt:
        _error(args, err, f"{PROG} {args.command}: interrupted")
        return 130
    except BrokenPipeError:  # `... | head`: the reader went away; Python must not complain at exit
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PROBLEMS
    except Exception as e:  # a bug: say what, without the connection string's secrets
        detail = "".join(traceback.format_exception(e))
        _error(args, err, f"{PROG} {args.command}: internal error, please report it:\n{detail}")
        return FAILURE
    finally:
        if ctx is not None:
            ctx.close()


def _error(args: argparse.Namespace, err: TextIO, line: str) -> None:
    """Print an error line without the connection string's secrets (from ``--uri`` or ``MONGODB_URI``)."""
    uri = args.uri or os.environ.get("MONGODB_URI")
    err.write((scrub(line, uri_secrets(uri)) if uri else line) + "\n")
