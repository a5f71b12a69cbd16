"""``python -m busto_apps COMMAND ...``: the applications of ``portrait_core`` and the Blender add-on."""

from __future__ import annotations

import importlib
import sys

#: command -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("busto_apps.demo", "end-to-end headless Blender demo: sample, extract, rig, animate, render"),
    "bench-blender": ("busto_apps.bench_blender",
                      "the add-on's workflow in headless Blender, timed; engine frame beside the mesh"),
}


def _usage() -> str:
    lines = ["usage: python -m busto_apps COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[name][0]).main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one ``error:`` line (``--debug``/``BUSTO_DEBUG=1``: the traceback)."""
    from portrait_core.cli.errors import run_cli

    return run_cli(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
