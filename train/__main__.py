"""``python -m train PRESET [key=value ...] [--dry-run] [--resume auto|PATH]``

Presets: tiny (CPU smoke run), synth128 (stage 1), synth512 (stage 2 super-resolution), shhq128, shhq512,
phq360 (360-degree mode with pose self-learning). Overrides use dotted keys of TrainConfig, e.g.
``optim.batch=8 run.steps=1000 data.root=/data/synth128``. Multi-GPU: ``torchrun --nproc_per_node N -m train ...``
(optim.batch is the global batch).
"""

from __future__ import annotations

import argparse
import os
import sys


def _main(argv: list[str]) -> int:
    from train.config import PRESETS, ConfigError, describe, parse_overrides, preset

    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="presets: " + ", ".join(PRESETS) + ". Errors print one 'error: <file>: "
                                       "<problem>' line; --debug (or BUSTO_DEBUG=1) shows the traceback.")
    p.add_argument("preset", help="named preset: " + ", ".join(PRESETS))
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted TrainConfig fields)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': continue the newest run of this preset (or run.name); or a run/checkpoint folder")
    a = p.parse_args(argv)
    try:
        cfg = parse_overrides(preset(a.preset), a.overrides)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg.validate(world)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        print(describe(cfg, world))
        return 0
    from train.loop import train

    given = {item.split("=", 1)[0].strip() for item in a.overrides}
    return train(cfg, resume=a.resume, given=given)


def main(argv: list[str] | None = None) -> int:
    """Train; user errors (data, checkpoints, labels, files, values) are one ``error:`` line and exit 2."""
    from portrait_core.cli.errors import run_cli
    from train.data import DataError

    return run_cli(_main, argv, user_errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
