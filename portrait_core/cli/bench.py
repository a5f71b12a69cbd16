"""``python -m portrait_core bench``: identity bake time and warm per-frame render time, one table.

For each preset and output resolution: build a random-init generator (or load a checkpoint: ``default`` is the
shipped model, or a ``.safetensors`` path; its own render mode), time the first avatar bake (cold: it also
bakes the shared manifold grid and bake-ray intersections) and a second one (warm: the per-identity work only),
then render ``--frames`` frames with a new pose and expression every frame (what an animation costs) and report
the median. The ray resolution is the output resolution divided by the super-resolution scale. A frame is what
the viewport, ``serve`` and ``video`` ask for: the output image, alpha and depth, without the ray-resolution image
of a super-resolved render (``Avatar.render(low_resolution=False)``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time

import torch

from portrait_core.generator import Generator, Latents, generator_config
from portrait_core.generator.loading import parse_int_list
from portrait_core.generator.precision import superres_bake_dtype
from portrait_core.geometry.camera import Camera


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m portrait_core bench", description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="small", help="comma-separated presets (paper, small, tiny), 'default' (the "
                   "shipped model) or generator .safetensors paths")
    p.add_argument("--resolutions", default="128", help="comma-separated output resolutions")
    p.add_argument("--mode", choices=["frontal", "360"], default="frontal")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, default=10, help="timed frames per row (after 2 warm-up frames)")
    p.add_argument("--batch", type=int, default=1, help="frames per render call")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the cores not busy with "
                   "other work, as `video` runs)")
    p.add_argument("--no-sr", action="store_true", help="time low-resolution renders (rays at the output size)")
    p.add_argument("--amp", action="store_true", help="render under autocast (bfloat16 on the CPU, float16 on CUDA); "
                   "the row's 'amp' column says which")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    """'cpu', or 'cuda (NVIDIA H100 ...)' naming the card."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if platform.system() == "Darwin" else 2**10)


def _generator_and_latents(preset: str, mode: str, device: torch.device):
    """(generator, latents(seed) function): a random-init preset, or a checkpoint ('default' or a path;
    appearance-code models get latents from their samplers)."""
    if preset == "default" or preset.endswith(".safetensors"):
        from portrait_core.generator import load_generator
        from portrait_core.generator.loading import default_checkpoint_path, identity_for_seed, samplers_for

        path = default_checkpoint_path() if preset == "default" else preset
        g = load_generator(path, device=device)
        samplers = samplers_for(g)  # by what the checkpoint is; None: N(0, I) latents
        return g, lambda seed: identity_for_seed(g, seed, samplers)[0].to(device)
    torch.manual_seed(0)
    g = Generator(generator_config(preset, render={"mode": mode})).to(device)
    return g, lambda seed: Latents.sample(1, seed=seed, device=device)


def _autocast(device: torch.device, amp: bool):
    """Autocast for ``--amp`` (float16 on CUDA, bfloat16 elsewhere), or a no-op context."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def bench_one(preset: str, resolution: int, device: torch.device, frames: int, batch: int, mode: str,
              super_resolve: bool, amp: bool = False) -> dict:
    g, latents = _generator_and_latents(preset, mode, device)
    g = g.eval()
    mode = g.cfg.render.mode
    scale = g.cfg.superres.scale if (super_resolve and g.superres is not None) else 1
    if resolution % scale:
        raise ValueError(f"resolution {resolution} is not a multiple of the {preset} SR scale {scale}")
    rays = resolution // scale
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), _autocast(device, amp):
        _sync(device)
        t0 = time.perf_counter()
        g.make_avatar(latents(0), super_resolve=scale > 1)
        _sync(device)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        avatar = g.make_avatar(latents(1), super_resolve=scale > 1)
        _sync(device)
        warm = time.perf_counter() - t0
        camera = Camera.portrait(batch=batch).to(device)
        gen = torch.Generator().manual_seed(0)
        times = []
        for i in range(frames + 2):
            pose = (torch.randn(batch, 6, 3, generator=gen) * 0.2).to(device)
            expression = torch.randn(batch, 64, generator=gen).to(device)
            _sync(device)
            t0 = time.perf_counter()
            avatar.render(pose, expression, camera, super_resolve=scale > 1, resolution=rays, low_resolution=False)
            _sync(device)
            if i >= 2:
                times.append((time.perf_counter() - t0) / batch)
    return {
        "preset": preset, "mode": mode, "resolution": resolution, "rays": rays, "device": _device_name(device),
        "amp": ("fp16" if device.type == "cuda" else "bf16") if amp else "off",
        "sr_bake": str(superres_bake_dtype(device)).removeprefix("torch.") if scale > 1 else "-",
        "threads": torch.get_num_threads(), "bake_cold_s": round(cold, 4), "bake_warm_s": round(warm, 4),
        "frame_median_s": round(statistics.median(times), 4), "frame_min_s": round(min(times), 4),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "parameters_m": round(sum(p.numel() for p in g.parameters()) / 1e6, 3),
    }


def format_table(rows: list[dict]) -> str:
    cols = [("preset", "preset"), ("mode", "mode"), ("resolution", "out px"), ("rays", "rays"),
            ("device", "device"), ("amp", "amp"), ("sr_bake", "SR bake"), ("threads", "thr"), ("parameters_m", "params M"), ("bake_cold_s", "bake cold s"),
            ("bake_warm_s", "bake warm s"), ("frame_median_s", "frame median s"), ("frame_min_s", "frame min s"),
            ("peak_memory_mb", "peak MB")]
    table = [[h for _, h in cols]] + [[str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from portrait_core.cli.errors import usage_error
    from portrait_core.cli.progress import auto_threads

    args = build_parser().parse_args(argv)
    torch.set_num_threads(auto_threads(args.threads))  # as `video` runs: the cores not busy with other work
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return usage_error("--device cuda but CUDA is not available")
    try:
        resolutions = parse_int_list(args.resolutions)
    except ValueError as e:
        return usage_error(f"--resolutions: {e}")
    rows = []
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        for res in resolutions:
            try:
                rows.append(bench_one(preset, res, device, args.frames, args.batch, args.mode, not args.no_sr,
                                      args.amp))
            except ValueError as e:
                return usage_error(str(e))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
