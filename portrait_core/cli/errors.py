"""One way for every command-line entry point to report errors: ``run_cli(main, argv)``.

A user error (a missing or corrupt file, a bad argument or value, one of Busto's named errors such as
``CheckpointError``/``LabelError``/``KeyframeError``, an ``OSError`` or a ``ValueError`` from bad input) prints
exactly one line ``error: <file>: <problem>`` to stderr and exits 2; several label problems print the first on
that line and the rest indented below it. Anything else is a bug: one ``error: unexpected <Type>: ...`` line and
exit 1. The traceback is shown only with ``--debug`` (accepted by every entry point, anywhere before a bare ``--``)
or with the environment variable ``BUSTO_DEBUG=1``; then the exception propagates unchanged. Ctrl-C prints
``error: interrupted`` and exits 130. ``SystemExit`` (argparse's usage errors, ``--help``) passes through.

Used by ``python -m portrait_core``, ``python -m portrait_core.data``, ``python -m train``,
``python -m train.evaluate`` and ``python -m portrait_core.assets.contact_sheet`` (see docs/cli.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

DEBUG_FLAG = "--debug"
DEBUG_ENV = "BUSTO_DEBUG"
#: exit status of a user error (as argparse's usage errors), of an unexpected error, and of Ctrl-C
USER_ERROR_EXIT = 2
UNEXPECTED_EXIT = 1
INTERRUPT_EXIT = 130
#: at most this many further problems are listed under the error line
MORE_PROBLEMS_SHOWN = 20

#: exception types that are the user's input, not a bug (subclasses included: every Busto named error derives from
#: ValueError, or is passed in ``user_errors`` by its entry point)
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, MemoryError)


def debug_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether ``BUSTO_DEBUG`` asks for tracebacks (any value but '', '0', 'false', 'no', 'off')."""
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def split_debug(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(``--debug`` was given, argv without it); arguments after a bare ``--`` are left alone."""
    out, debug, literal = [], False, False
    for arg in argv:
        if not literal and arg == "--":
            literal = True
        elif not literal and arg == DEBUG_FLAG:
            debug = True
            continue
        out.append(arg)
    return debug, out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_error(e: BaseException) -> str:
    """The text after ``error: ``: ``<file>: <problem>`` where the exception knows its file."""
    if isinstance(e, OSError) and getattr(e, "filename", None) is not None:
        problem = e.strerror or type(e).__name__
        if getattr(e, "filename2", None) is not None:
            return _one_line(f"{e.filename} -> {e.filename2}: {problem}")
        return _one_line(f"{e.filename}: {problem}")
    if isinstance(e, UnicodeDecodeError):
        return _one_line(f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}")
    if isinstance(e, MemoryError):
        return _one_line(f"out of memory{': ' + str(e) if str(e) else ''}")
    problems = getattr(e, "problems", None)
    if isinstance(problems, list) and problems:
        return _one_line(problems[0])
    text = str(e)
    if isinstance(e, KeyError) and e.args:  # KeyError's str() is the quoted key only
        text = f"missing key {e.args[0]!r}"
    return _one_line(text) or type(e).__name__


def report_error(e: BaseException, user: bool, stream: TextIO | None = None) -> None:
    """Print the ``error:`` line (plus any further label problems, indented) to ``stream`` (stderr)."""
    stream = sys.stderr if stream is None else stream
    if user:
        line = describe_error(e)
    else:
        line = (f"unexpected {type(e).__name__}: {describe_error(e)} (a bug; rerun with {DEBUG_FLAG} or "
                f"{DEBUG_ENV}=1 for the traceback)")
    problems = getattr(e, "problems", None)
    more = problems[1:] if isinstance(problems, list) else []
    if more:
        line += f" (and {len(more)} more problem(s):)"
    print(f"error: {line}", file=stream, flush=True)
    for p in more[:MORE_PROBLEMS_SHOWN]:
        print(f"  {_one_line(p)}", file=stream)
    if len(more) > MORE_PROBLEMS_SHOWN:
        print(f"  ... {len(more) - MORE_PROBLEMS_SHOWN} more", file=stream)


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
            user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Call ``main(argv)`` and turn an exception into one ``error:`` line and an exit status (see the module doc).

    ``argv`` defaults to ``sys.argv[1:]``; ``--debug`` is removed from it before ``main`` sees it.
    ``user_errors``: further exception types (e.g. a RuntimeError-based ``DataError``) that are user errors.
    """
    debug, args = split_debug(sys.argv[1:] if argv is None else argv)
    debug = debug or debug_enabled()
    try:
        return int(main(args) or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr, flush=True)
        return INTERRUPT_EXIT
    except Exception as e:  # noqa: BLE001 - the one place that reports any error as one line
        if debug:
            raise
        user = isinstance(e, USER_ERRORS + tuple(user_errors))
        report_error(e, user)
        return USER_ERROR_EXIT if user else UNEXPECTED_EXIT


def usage_error(message: str) -> int:
    """Print ``error: <message>`` (a bad argument or value found after parsing) and return the user-error status."""
    print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT


def dispatch_command(prog: str, commands: dict[str, tuple[str, str]], argv: Sequence[str],
                     notes: Sequence[str] = ()) -> int:
    """Run ``commands[argv[0]]`` (module with ``main(argv) -> int``, imported only when used) on the rest of
    ``argv``; no command or ``-h``/``--help`` prints the usage, an unknown one is a usage error (exit 2)."""
    import importlib

    lines = [f"usage: python -m {prog} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in commands.items()]
    usage = "\n".join([*lines, *([""] + list(notes) if notes else [])])
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    name, rest = argv[0], list(argv[1:])
    if name not in commands:
        print(f"error: unknown command {name!r}\n\n{usage}", file=sys.stderr)
        return 2
    return int(importlib.import_module(commands[name][0]).main(rest) or 0)
