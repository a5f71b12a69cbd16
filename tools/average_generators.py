"""Weight average of two generators that share an ancestor: ``(1 - a) * BASE + a * OTHER``.

``python tools/average_generators.py BASE OTHER --weight A --out OUT.safetensors``

Every floating-point tensor both checkpoints have (same name and shape) is averaged; what only OTHER has (e.g. a
face texture BASE lacks) is OTHER's as it is, and OUT has OTHER's config and checkpoint info. Two fine-tunes of
one model stay close enough in weight space that their average is a model between them (the model card's
weight-average table: half of a geometry correction for almost none of its PSNR cost). A tensor both have with
different shapes is an error naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def average_state(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor], weight: float
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``other`` with each floating-point tensor that ``base`` also has replaced by ``(1 - weight) * base +
    weight * other``; returns the new state and the averaged names."""
    out, mixed = dict(other), []
    for name, value in other.items():
        if name not in base or not value.is_floating_point():
            continue
        if base[name].shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(base[name].shape)} in the base, {tuple(value.shape)} in the other")
        out[name] = torch.lerp(base[name].to(value.dtype), value, weight)
        mixed.append(name)
    return out, mixed


def main(argv: list[str] | None = None) -> int:
    from portrait_core.generator import load_generator, save_generator

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base")
    p.add_argument("other")
    p.add_argument("--weight", type=float, required=True, help="a: 0 gives BASE's weights, 1 gives OTHER's")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not 0.0 <= a.weight <= 1.0:
        p.error(f"--weight must be in [0, 1], got {a.weight}")
    base, other = load_generator(a.base), load_generator(a.other)
    try:
        state, mixed = average_state(base.state_dict(), other.state_dict(), a.weight)
    except ValueError as e:
        print(f"error: {a.base} and {a.other}: {e}", file=sys.stderr)
        return 2
    other.load_state_dict(state)
    info = dict(other.checkpoint_info or {})
    info["weight_average"] = {"base": Path(a.base).name, "other": Path(a.other).name, "weight": a.weight,
                              "averaged_tensors": len(mixed)}
    save_generator(a.out, other, info=info)
    print(f"averaged {len(mixed)} of {len(state)} tensors at a = {a.weight} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
