"""How much of a SynthPortrait image its labels determine: the held-out PSNR ceiling of a labels-conditioned model.

``python tools/label_ceiling.py DATA_DIR [--identities 16] [--draws 8] [--threads 1]`` (needs bpy).

The renderer draws each person's look from (seed, identity index). The labels a model is given (identity, body
shape, pose, expression, cameras and the ``extra`` description) fix most of those draws; the rest (``hidden``:
the ones SynthPortrait labels carried only from ``extra``'s second version on) are unknown to a model fed the
first-version appearance code. This script re-renders the last ``--identities`` identities of DATA_DIR (the
held-out protocol of ``train.evaluate --heldout``) with those draws taken from other people and compares, at the
evaluation's 64^2 (area-downsampled), as ``psnr`` (mean of per-image PSNRs, as ``train.labelled.evaluate_heldout``
reports; an unchanged image counts as 120 dB) and ``psnr_of_mean_mse`` (PSNR of the mean squared error: not
inflated by images a redraw leaves unchanged, e.g. a solid shirt under a new stripe frequency):

- ``same``: nothing redrawn (the render is bit-exact, so this is infinite; a check);
- ``<group>`` / ``hidden``: one group / every hidden draw taken from another person: what a *sharp* model that
  draws the unknowns at random would score;
- ``hidden_mean``: the mean of ``--draws`` such renders as the prediction: about the best a *blurry* model
  (the conditional mean, what L1/L2 regression converges to) can score.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The per-identity draws the first-version ``extra`` did not name, by what they change.
HIDDEN = {"hair": ("fringe", "volume"), "clothing": ("pattern_freq", "pattern_dir", "cloth2", "sleeves"),
          "eye": ("eye",)}


def area64(image: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None] / 255
    return torch.nn.functional.adaptive_avg_pool2d(t, 64)[0]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean().clamp_min(1e-12)))  # 120 dB when equal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    from PIL import Image

    from portrait_core.data.synth import render as R
    from portrait_core.data.synth.avatar import sample_identity

    settings = json.loads((a.data / "synth.json").read_text())
    count = len(json.loads((a.data / "labels.json").read_text())["images"])
    cfg = R.SynthConfig(count=count, resolution=settings["resolution"], face_resolution=settings["face_resolution"],
                        yaw_mode=settings["yaw_mode"], seed=settings["seed"], samples=settings["samples"],
                        views_per_identity=settings["views_per_identity"])
    R._worker_setup(cfg, str(a.data), a.threads)
    factory = R._W["factory"]
    first = count - a.identities * cfg.views_per_identity

    def summary(scores: list[list[float]]) -> dict[str, float]:
        """[image][portrait, face] PSNRs -> both averages of each."""
        arr = np.asarray(scores)
        out = {}
        for j, name in enumerate(("portrait", "face")):
            out[f"{name}_psnr"] = float(arr[:, j].mean())
            out[f"{name}_psnr_of_mean_mse"] = float(-10 * np.log10(np.mean(10 ** (-arr[:, j] / 10))))
        return out

    def render(index: int, names: tuple[str, ...], donor: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` with the draws ``names`` taken from person ``donor`` of another stream."""
        def sample(rng):
            own = sample_identity(rng)
            other = sample_identity(np.random.default_rng([cfg.seed + 1000, donor]))
            return dataclasses.replace(own, **{n: getattr(other, n) for n in names})
        factory.sample_identity, R._W["baked_key"] = sample, None
        s = R.render_sample(index)
        return area64(s["image"]), area64(s["face"])

    truth = {i: (area64(np.asarray(Image.open(a.data / "images" / f"{i:06d}.png").convert("RGB"))),
                 area64(np.asarray(Image.open(a.data / "faces" / f"{i:06d}.png").convert("RGB"))))
             for i in range(first, count)}
    variants = {"same": (), **HIDDEN, "hidden": sum(HIDDEN.values(), ())}
    report: dict[str, dict[str, float]] = {}
    for name, names in variants.items():
        scores = [[psnr(x, t) for x, t in zip(render(i, names, i), truth[i])] for i in range(first, count)]
        report[name] = summary(scores)
    means = []
    for i in range(first, count):
        draws = [render(i, variants["hidden"], i * 100 + k) for k in range(a.draws)]
        means.append([psnr(torch.stack([d[j] for d in draws]).mean(0), truth[i][j]) for j in (0, 1)])
    report["hidden_mean"] = {**summary(means), "draws": a.draws}
    print(json.dumps({"data": str(a.data), "images": count - first, **report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
