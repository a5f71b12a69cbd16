"""``python -m busto_apps COMMAND ...``: the applications of ``portrait_core`` and the Blender add-on."""

from __future__ import annotations

import sys

#: command -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("busto_apps.demo", "end-to-end headless Blender demo: sample, extract, rig, animate, render"),
    "bench-blender": ("busto_apps.bench_blender",
                      "the add-on's workflow in headless Blender, timed; engine frame beside the mesh"),
}


def _dispatch(argv: list[str]) -> int:
    from portrait_core.cli.errors import dispatch_command

    return dispatch_command("busto_apps", COMMANDS, argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one ``error:`` line (``--debug``/``BUSTO_DEBUG=1``: the traceback)."""
    from portrait_core.cli.errors import run_cli

    return run_cli(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
