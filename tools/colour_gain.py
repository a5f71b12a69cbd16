"""Make a generator's colours follow its appearance code's clothing colours more strongly.

``python tools/colour_gain.py GEN --gain 1.3 --out OUT.safetensors [--blocks a,b] [--samplers S]``

A supervised fit pulls colours towards the data's mean: the model card's clothing-colour slope (render colour
against image colour on training records) was 0.66-0.76 for the 2026-12-07 default, so a shirt 10 % brighter than
the mean came out about 7 % brighter. The radiance mapping reads the appearance code linearly in its first layer,
so scaling the first-layer weight columns that read the clothing-colour blocks (``--blocks``, names from
``portrait_core.assets.appearance.APPEARANCE_LAYOUT``) by GAIN feeds the network those colours GAIN times farther
from the code's zero, which is the mean. The radiance truncation average moves by the mean change of the mapped
styles over 4096 draws from the generator's label samplers (as avatars draw them). Only for appearance-code generators; GAIN is measured, not
derived: score the result (``train.evaluate``) before shipping it. OUT records ``info.colour_gain``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLOTHING_BLOCKS = ("clothing_colour", "clothing_primary", "clothing_secondary")


def scale_code_columns(weight: Tensor, identity_dim: int, blocks: list[tuple[int, int]], gain: float) -> Tensor:
    """A copy of a first-layer ``weight`` [out, identity_dim + code_dim] with the columns reading the code's
    ``blocks`` ((start, stop) in the code, after the identity) multiplied by ``gain``."""
    scaled = weight.clone()
    for start, stop in blocks:
        if not 0 <= start < stop <= weight.shape[1] - identity_dim:
            raise ValueError(f"block ({start}, {stop}) is outside the {weight.shape[1] - identity_dim}-d code")
        scaled[:, identity_dim + start:identity_dim + stop] *= gain
    return scaled


def main(argv: list[str] | None = None) -> int:
    from portrait_core.assets.appearance import APPEARANCE_LAYOUT
    from portrait_core.generator import load_generator, save_generator
    from portrait_core.generator.loading import samplers_for, uses_appearance_codes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("generator")
    p.add_argument("--gain", type=float, required=True, help="1 leaves the generator as it is")
    p.add_argument("--blocks", default=",".join(CLOTHING_BLOCKS),
                   help=f"appearance-code blocks to scale (default {','.join(CLOTHING_BLOCKS)})")
    p.add_argument("--samplers", default=None, help="label samplers (default: those found beside the generator)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not 0.0 < a.gain <= 4.0:
        p.error(f"--gain must be in (0, 4], got {a.gain}")
    names = [b.strip() for b in a.blocks.split(",") if b.strip()]
    unknown = [n for n in names if n not in APPEARANCE_LAYOUT]
    if unknown or not names:
        p.error(f"--blocks: unknown {unknown or names}; known: {', '.join(APPEARANCE_LAYOUT)}")
    G = load_generator(a.generator)
    if not uses_appearance_codes(G):
        print(f"error: {a.generator}: its noise latent is not an appearance code, so it has no colour blocks",
              file=sys.stderr)
        return 2
    samplers = samplers_for(G, a.samplers)
    first = G.radiance_mapping.net[0]
    with torch.no_grad():
        latents, _ = samplers.identities(4096, seed=0)
        z = torch.cat([latents.identity, latents.noise], -1).to(G.device, first.weight.dtype)
        before = G.radiance_mapping(z).mean(0)
        first.weight.copy_(scale_code_columns(first.weight, G.cfg.identity_dim, [APPEARANCE_LAYOUT[n] for n in names],
                                              a.gain))
        G.radiance_style_avg += G.radiance_mapping(z).mean(0) - before
    info = dict(G.checkpoint_info or {})
    info["colour_gain"] = {"gain": a.gain, "blocks": names, "source": Path(a.generator).name}
    save_generator(a.out, G, info=info)
    print(f"scaled the radiance mapping's reading of {', '.join(names)} by {a.gain} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
