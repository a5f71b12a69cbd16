"""Switch a generator's expression deformation to the 3DMM's own motion.

``python tools/follow_3dmm.py GEN --out OUT.safetensors [--face-grid 48] [--iterations 6] [--off]``

Sets ``expression.follow_3dmm`` (docs/generator.md): Delta becomes the face model's forward field inverted on the
expression grids, and the network keeps only the shading. ``--face-grid`` sets ``render.face_grid`` (the fine grid
the forward field lives on; 48 gives 3-5 mm cells, 0 leaves only the 1 cm head-box grid), ``--iterations``
``render.expression_iterations``. The weights are unchanged; OUT keeps GEN's checkpoint info (so its label samplers
and protocol stay the same) plus ``info.follow_3dmm``, and the samplers file that info names is copied beside OUT.
``--off`` switches back. Score the result (``train.evaluate``) before shipping it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from portrait_core.generator import load_generator, save_generator
    from portrait_core.generator.checkpoint import CheckpointError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("generator")
    p.add_argument("--out", required=True)
    p.add_argument("--face-grid", type=int, default=48, help="render.face_grid (0: none)")
    p.add_argument("--iterations", type=int, default=6, help="render.expression_iterations")
    p.add_argument("--off", action="store_true", help="switch follow_3dmm off (the network's Delta again)")
    a = p.parse_args(argv)
    try:
        G = load_generator(a.generator)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # GeneratorConfig validates itself
        G.cfg = replace(G.cfg, expression=replace(G.cfg.expression, follow_3dmm=not a.off),
                        render=replace(G.cfg.render, face_grid=a.face_grid, expression_iterations=a.iterations))
    except ValueError as e:
        p.error(str(e))
    info = dict(G.checkpoint_info or {})
    info["follow_3dmm"] = {"on": not a.off, "face_grid": a.face_grid, "iterations": a.iterations,
                           "source": Path(a.generator).name}
    out = Path(a.out)
    save_generator(out, G, info=info)
    named = info.get("samplers")
    source = Path(a.generator).parent / named if isinstance(named, str) and named else None
    if source is not None and source.is_file() and not (out.parent / named).exists():
        shutil.copyfile(source, out.parent / named)
    print(f"expression.follow_3dmm={not a.off}, render.face_grid={a.face_grid}, "
          f"render.expression_iterations={a.iterations} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
