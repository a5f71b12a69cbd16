"""``python -m portrait_core COMMAND ...``: one module per command, imported only when used."""

from __future__ import annotations

import sys

#: command -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "preview-body": ("portrait_core.cli.preview_body", "PNGs of the body and face models, landmarks and camera frusta"),
    "sample": ("portrait_core.cli.sample", "a grid of avatars over seeds, truncation and camera yaw"),
    "video": ("portrait_core.cli.video", "drive one avatar with keyframe files to MP4 and PNG frames"),
    "bench": ("portrait_core.cli.bench", "identity bake and per-frame render timings, one table"),
    # applications of portrait_core and the add-on (package busto_apps, above both): aliases, named by string
    "bench-blender": ("busto_apps.bench_blender",
                      "the add-on's workflow in headless Blender, timed (python -m busto_apps bench-blender)"),
    "export": ("portrait_core.cli.export", "extract a rigged, coloured, expressive glTF avatar (.glb/.obj/.ply)"),
    "invert": ("portrait_core.cli.invert", "an avatar of the person in a photo: invert, tune, bake (+ sheet, --glb)"),
    "serve": ("portrait_core.serve", "model worker for the Blender add-on (stdin/stdout protocol)"),
    "demo": ("busto_apps.demo", "end-to-end headless Blender demo: sample, extract, rig, animate, render "
                                "(python -m busto_apps demo)"),
}


NOTES = ("Data tools: python -m portrait_core.data --help; training: python -m train --help",
         "Errors print one 'error: <file>: <problem>' line; --debug (or BUSTO_DEBUG=1) shows the traceback.")


def _dispatch(argv: list[str]) -> int:
    from portrait_core.cli.errors import dispatch_command

    return dispatch_command("portrait_core", COMMANDS, argv, NOTES)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one ``error:`` line (``--debug``/``BUSTO_DEBUG=1``: the traceback)."""
    from portrait_core.cli.errors import run_cli

    return run_cli(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
