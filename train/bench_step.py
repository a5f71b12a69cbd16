"""``python -m train.bench_step PRESET [key=value ...] [--steps N]``: seconds per training step, on any device.

Builds the run exactly as ``python -m train`` does (the same presets and dotted overrides; the run folder goes to a
temporary directory unless ``run.out`` is given), runs one untimed warm-up step (it also pays the lazy R1 step of
adversarial presets and the first-use costs), then ``--steps`` timed steps, and prints one table row: median and
minimum seconds per step, steps and images per second, the device (the card's name on CUDA) and the peak memory.
No checkpoint is written (the run folder's set-up files go to the temporary directory). CUDA is synchronised
around every step. A data folder is needed (``data.root=...``); the
device is the config's (``device=cuda`` or ``cpu``; ``auto`` picks CUDA when present).

    python -m train.bench_step warm128 data.root=out/synth_default model.init_from=portrait_core/assets/default.safetensors
    python -m train.bench_step adv64 data.root=out/synth_default device=cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time


def time_steps(cfg, steps: int, log=lambda *_: None) -> dict:
    """Median / min seconds of ``steps`` training steps after one warm-up step, for a validated TrainConfig."""
    import torch

    from portrait_core.cli.bench import _device_name, _peak_memory_mb, _sync
    from train.loop import flush_denormals, prepare, train_step

    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    st, ctx = prepare(cfg, None, log=log)
    flushing = flush_denormals(st.cfg)  # as train() runs its steps
    device = ctx.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            train_step(st, ctx)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
    finally:
        ctx.logger.close()
        if flushing:
            torch.set_flush_denormal(False)
    median = statistics.median(times)
    batch = cfg.optim.batch
    return {"preset": cfg.preset, "objective": cfg.objective, "stage": cfg.stage, "batch": batch,
            "device": _device_name(device), "threads": torch.get_num_threads(), "steps": steps,
            "step_median_s": round(median, 4), "step_min_s": round(min(times), 4),
            "steps_per_s": round(1.0 / median, 3), "images_per_s": round(batch / median, 2),
            "peak_memory_mb": round(_peak_memory_mb(device), 1)}


def main(argv: list[str] | None = None) -> int:
    from train.config import ConfigError, parse_overrides, preset

    p = argparse.ArgumentParser(prog="python -m train.bench_step", description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for python -m train")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    a = p.parse_intermixed_args(argv)
    with tempfile.TemporaryDirectory(prefix="busto-bench-step-") as tmp:
        overrides = list(a.overrides)
        if not any(o.split("=", 1)[0].strip() == "run.out" for o in overrides):
            overrides.append(f"run.out={tmp}")
        overrides += ["run.progress=false", "run.tensorboard=false"]
        try:
            cfg = parse_overrides(preset(a.preset), overrides)
            cfg.validate(1)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        row = time_steps(cfg, a.steps)
    if a.json:
        print(json.dumps(row))
    else:
        print(" | ".join(f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli
    from train.data import DataError

    sys.exit(run_cli(main, None, user_errors=(DataError,)))
