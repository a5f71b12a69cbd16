"""``python -m train.supervised ...`` - the old command line of the supervised warm start, kept as an alias.

Supervised training is the ``supervised`` objective of ``python -m train`` (preset ``warm128``; docs/training.md).
This alias translates the old options, prints the equivalent ``python -m train`` (or, with ``--eval-only``,
``python -m train.evaluate --heldout``) command, and runs it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

#: old option -> dotted TrainConfig key
OPTION_KEYS = {
    "preset": "model.generator", "generator_overrides": "model.generator_overrides", "steps": "run.steps",
    "batch": "optim.batch", "resolution": "data.resolution", "face_resolution": "data.face_resolution",
    "patch_prob": "supervised.patch_prob", "patch_scale": "supervised.patch_scale",
    "face_patch_prob": "supervised.face_patch_prob", "face_patch_scale": "supervised.face_patch_scale",
    "face_mouth_weight": "supervised.face_mouth_weight", "lr": "optim.lr_g",
    "lr_manifold_scale": "optim.lr_manifold_scale", "lr_colour_head_scale": "optim.lr_colour_head_scale",
    "lr_min_fraction": "optim.lr_min_fraction", "w_image": "supervised.image", "w_alpha": "supervised.alpha",
    "w_grad": "supervised.grad", "w_face": "supervised.face", "w_face_grad": "supervised.face_grad",
    "w_imitation": "loss.imitation", "w_smooth_expression": "loss.smooth_expression",
    "w_minimal_deformation": "loss.minimal_deformation", "w_shading": "loss.shading",
    "w_shading_imitation": "loss.shading_imitation", "w_smooth_pose": "loss.smooth_pose",
    "reg_points": "loss.num_reg_points", "imitation_moving_fraction": "loss.imitation_moving_fraction",
    "imitation_sweep_fraction": "loss.imitation_sweep_fraction", "imitation_warmup": "loss.imitation_warmup",
    "holdout": "data.holdout", "seed": "seed", "threads": "threads", "minutes": "run.minutes",
    "sample_every": "run.image_every", "eval_resolution": "supervised.eval_resolution", "init": "model.init_from",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.supervised", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, nargs="+", metavar="DIR")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--stage", default="radiance", choices=["radiance", "superres"])
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--eval-images", type=int, default=0)
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--export", default="")
    for name in OPTION_KEYS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    return p


def translate(argv: list[str]) -> list[str]:
    """The equivalent argument list of ``python -m train`` (or of ``python -m train.evaluate``, first element
    ``'train.evaluate'``) for an old ``train.supervised`` command line."""
    a = build_parser().parse_args(argv)
    out = Path(a.out)
    if a.eval_only:
        cmd = ["train.evaluate", str(_generator_of(out)), "--heldout", a.holdout or "16", "--data", *a.data]
        cmd += ["--heldout-resolution", a.eval_resolution] if a.eval_resolution else []
        cmd += ["--images", str(a.eval_images)] if a.eval_images else []
        cmd += ["--baselines"] if a.baselines else []
        cmd += ["--export", a.export] if a.export else []
        return cmd
    preset = "warm128-sr" if a.stage == "superres" else "warm128"
    cmd = ["train", preset, f"data.root={a.data[-1]}", f"data.extra_roots={','.join(a.data[:-1])}",
           f"run.out={out.parent}", f"run.name={out.name}"]
    for name, key in OPTION_KEYS.items():
        value = getattr(a, name)
        if value is not None:
            cmd.append(f"{key}={value}")
    return cmd + ["--resume", "auto"]


def _generator_of(run: Path) -> Path:
    """The exported generator of a run folder (its latest checkpoint) or the old layout's generator file."""
    old = run / "generator.safetensors"
    return old if old.is_file() else run


def main(argv: list[str] | None = None) -> int:
    cmd = translate(sys.argv[1:] if argv is None else argv)
    print("train.supervised is an alias; the equivalent command is:\n  python -m " +
          " ".join(shlex.quote(c) for c in cmd), flush=True)
    if cmd[0] == "train.evaluate":
        from train.evaluate import main as run
    else:
        from train.__main__ import main as run
    return run(cmd[1:])


if __name__ == "__main__":
    sys.exit(main())
