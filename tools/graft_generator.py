"""Copy parts of one generator into another: ``python tools/graft_generator.py BASE DONOR --out OUT.safetensors``.

Every tensor of DONOR whose name starts with one of ``--prefixes`` (default: the super-resolution, its mapping and
its truncation average) replaces BASE's; everything else is BASE's, and OUT has BASE's config and checkpoint info
plus ``info.graft``. Meant for a stage that trains one part on its own (``warm128-sr`` trains only the
super-resolution of a frozen model): its result can be put on another model of the same family, whose textures
it then reads. Score the result before shipping it. A prefix that names nothing, or a tensor whose shape differs,
is an error naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUPERRES_PREFIXES = ("superres.", "superres_mapping.", "superres_style_avg")


def graft_state(base: dict[str, torch.Tensor], donor: dict[str, torch.Tensor], prefixes: tuple[str, ...]
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``base`` with the tensors of ``donor`` whose names start with one of ``prefixes``; returns the new state and
    the copied names. ValueError for a prefix that matches no tensor of both, or a shape that differs."""
    out, copied = dict(base), []
    for prefix in prefixes:
        names = [n for n in donor if n.startswith(prefix) and n in base]
        if not names:
            raise ValueError(f"prefix {prefix!r} names no tensor that both generators have")
        for name in names:
            if donor[name].shape != base[name].shape:
                raise ValueError(f"{name}: shape {tuple(base[name].shape)} in the base, {tuple(donor[name].shape)} "
                                 f"in the donor")
            out[name] = donor[name].to(base[name].dtype).clone()
            copied.append(name)
    return out, copied


def main(argv: list[str] | None = None) -> int:
    from portrait_core.generator import load_generator, save_generator

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base")
    p.add_argument("donor")
    p.add_argument("--prefixes", default=",".join(SUPERRES_PREFIXES),
                   help=f"comma-separated tensor-name prefixes to take from DONOR (default {','.join(SUPERRES_PREFIXES)})")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    prefixes = tuple(x.strip() for x in a.prefixes.split(",") if x.strip())
    if not prefixes:
        p.error("--prefixes is empty")
    base, donor = load_generator(a.base), load_generator(a.donor)
    try:
        state, copied = graft_state(base.state_dict(), donor.state_dict(), prefixes)
    except ValueError as e:
        print(f"error: {a.base} and {a.donor}: {e}", file=sys.stderr)
        return 2
    base.load_state_dict(state)
    info = dict(base.checkpoint_info or {})
    info["graft"] = {"donor": Path(a.donor).name, "prefixes": list(prefixes), "tensors": len(copied)}
    save_generator(a.out, base, info=info)
    print(f"took {len(copied)} tensors ({', '.join(prefixes)}) from {a.donor} -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
