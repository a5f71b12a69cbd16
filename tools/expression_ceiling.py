"""How far a generator's expression deformation can follow the 3DMM, and what limits it.

``python tools/expression_ceiling.py [GEN] [--controls smile,jaw_open] [--value 2.5] [--steps 1500] [--grids 32,48,64]``

The model card's expression row (``train.fidelity.expression_fidelity``) compares the deformation avatars use (the
network sampled on the head-box grid, ``render.expression_grid`` nodes a side, trilinear in between) with the
3DMM's, at the 200 vertices one control alone moves most. Three figures per control separate the limits:

- ``3dmm smoothed at r``: the ratio a deformation field reaches if it is the 3DMM's own backward field averaged
  over a ball of radius r (mm) around each vertex: how much fine structure the target has. A field that varies
  over a few millimetres (a smile's mouth corners) loses much of its motion to any smoothing at that scale;
- ``generator``: the generator as it is, read through grids of each size and directly (``net``);
- ``one-label fit``: a copy of the generator's expression branch fitted (render-free imitation, the training
  loop's regulariser weights) to one identity with this control alone, then read the same ways: the network's
  capacity for the motion and each grid's cap on it, with the conditioning taken out of the question.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def smoothed_target_ratio(vertices: Tensor, targets: Tensor, moving: Tensor, radius: float) -> float:
    """Ratio reached at the ``moving`` vertices [K] (indices into [V]) by the targets [V, 3] averaged over every
    vertex [V, 3] within ``radius`` (metres): mean component along each moving vertex's own target, divided by the
    mean target length. 1 at radius 0; lower where the target varies within the radius."""
    own = targets[moving]
    near = (torch.cdist(vertices[moving], vertices) <= radius).to(targets.dtype)
    averaged = (near @ targets) / near.sum(1, keepdim=True)
    length = own.norm(dim=-1)
    return float(((averaged * own).sum(-1) / length.clamp_min(1e-12)).mean() / length.mean().clamp_min(1e-12))


def control_expression(G, name: str, value: float, count: int = 1) -> Tensor:
    """[count, expression_dim] with the named control at ``value`` and every other coefficient 0."""
    from portrait_core.face import EXPRESSION_NAMES

    expression = torch.zeros(count, G.cfg.expression_dim)
    expression[:, EXPRESSION_NAMES[name]] = value
    return expression


def fit_one_label(G, identity: Tensor, expression: Tensor, body_shape: Tensor, steps: int, lr: float = 1e-3,
                  seed: int = 0):
    """A copy of ``G`` whose expression branch (deformation network + mapping) is fitted by Adam (cosine to 10 %)
    to one label (identity [1, 80], expression [1, E], body_shape [1, 10]) with the training loop's weighted
    deformation regularisers (imitation at 3DMM vertices, half drawn where the 3DMM moves, smoothness, minimal
    deformation). The rest of the copy is ``G``'s."""
    from train.config import LossConfig
    from train.objectives import regulariser_terms, weighted
    from train.schedules import cosine_lr_factor

    fitted = copy.deepcopy(G).train()
    loss_cfg = replace(LossConfig(), imitation_moving_fraction=0.5)
    params = [*fitted.expression_deform.parameters(), *fitted.expression_mapping.parameters()]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    identities, expressions, body_shapes = (t.expand(8, -1) for t in (identity, expression, body_shape))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * cosine_lr_factor(step, steps, 0.1, 0)
        loss = weighted(regulariser_terms(fitted, loss_cfg, identities, expressions, body_shapes, None, gen),
                        loss_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fitted.eval()


def ratios_by_grid(G, identity: Tensor, body_shape: Tensor, name: str, value: float, grids: list[int]) -> dict:
    """``expression_fidelity``'s ratio for one control at ``value`` with each grid size (0: the network itself; NaN
    for a generator whose Delta follows the 3DMM, ``expression.follow_3dmm``, which has no network Delta)."""
    from train.fidelity import expression_fidelity

    keep = G.cfg
    out = {}
    try:
        for g in grids:
            if g == 0 and keep.expression.follow_3dmm:
                out[g] = float("nan")
                continue
            G.cfg = replace(keep, render=replace(keep.render, expression_grid=g))
            with torch.no_grad():
                out[g] = expression_fidelity(G, identity, body_shape, controls=(name,), value=value)[name]["ratio"]
    finally:
        G.cfg = keep
    return out


def main(argv: list[str] | None = None) -> int:
    from portrait_core.assets import default_checkpoint_path
    from portrait_core.generator import load_generator
    from portrait_core.generator.checkpoint import CheckpointError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("generator", nargs="?", default=None, help="default: the shipped model")
    p.add_argument("--controls", default="smile,jaw_open")
    p.add_argument("--value", type=float, default=2.5)
    p.add_argument("--identities", type=int, default=16, help="random identity codes the generator is scored on")
    p.add_argument("--steps", type=int, default=1500, help="one-label fit steps (0: skip the fit)")
    p.add_argument("--grids", default="32,48,64")
    p.add_argument("--radii-mm", default="2,5,10,20")
    a = p.parse_args(argv)
    from portrait_core.face import EXPRESSION_NAMES

    names = [n.strip() for n in a.controls.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPRESSION_NAMES]
    if unknown or not names:
        p.error(f"--controls: unknown {unknown or names}; known: {', '.join(EXPRESSION_NAMES)}")
    try:
        grids = [int(g) for g in a.grids.split(",") if g.strip()] + [0]
        radii = [float(r) * 1e-3 for r in a.radii_mm.split(",") if r.strip()]
    except ValueError as e:
        p.error(f"--grids / --radii-mm: {e}")
    if any(g < 2 or g > 128 for g in grids[:-1]) or any(r <= 0 for r in radii):
        p.error("--grids must be sizes in 2..128 and --radii-mm positive")
    if a.identities < 1:
        p.error(f"--identities must be at least 1, got {a.identities}")
    path = a.generator or default_checkpoint_path()
    try:
        G = load_generator(path)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    identity = torch.randn(a.identities, 80, generator=torch.Generator().manual_seed(0))
    body_shape = torch.zeros(a.identities, 10)
    columns = " ".join(f"{'net' if g == 0 else f'{g}^3':>6}" for g in grids)
    print(f"{Path(path).name}: ratio of the 3DMM motion reached at its 200 most-moving vertices, control alone at "
          f"{a.value}\n{'':28}{columns}")
    for name in names:
        expression = control_expression(G, name, a.value)
        with torch.no_grad():
            offsets = G.face.expression_offsets(identity[:1], expression)[0]
            vertices = G.face.vertices(identity[:1], expression)[0]
        moving = offsets.norm(dim=-1).topk(200).indices
        smooth = ", ".join(f"{r * 1e3:g} mm {smoothed_target_ratio(vertices, -offsets, moving, r):.3f}"
                           for r in radii)
        print(f"{name}: 3dmm smoothed at {smooth}")
        row = ratios_by_grid(G, identity, body_shape, name, a.value, grids)
        print(f"  {'generator':26}" + " ".join(f"{row[g]:6.3f}" for g in grids))
        if a.steps > 0:
            fitted = fit_one_label(G, identity[:1], expression, body_shape[:1], a.steps)
            row = ratios_by_grid(fitted, identity[:1], body_shape[:1], name, a.value, grids)
            print(f"  {f'one-label fit ({a.steps} steps)':26}" + " ".join(f"{row[g]:6.3f}" for g in grids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
