"""``python -m portrait_core invert PHOTO --out DIR``: an avatar of the person in a photo.

Prepares the photo (``portrait_core.photo.prepare``; or takes record ``--index`` of a prepared dataset folder with
``--prepared DIR``), optimises the default model's appearance latent to reproduce it, tunes the model around that
pivot and writes DIR/avatar.safetensors (+ samplers.safetensors beside it: load it with ``--checkpoint`` in every
command and the add-on), DIR/sheet.png, DIR/report.json and, with ``--glb``, the rigged DIR/avatar.glb.
See docs/photo.md.
"""

from __future__ import annotations

import argparse
import sys

from portrait_core.photo.invert import MAX_STEPS, InvertSettings


def build_parser() -> argparse.ArgumentParser:
    d = InvertSettings()
    p = argparse.ArgumentParser(prog="python -m portrait_core invert", description=__doc__.split("\n")[0])
    p.add_argument("photo", nargs="?", help="portrait photo (JPEG, PNG, ...)")
    p.add_argument("--prepared", help="a prepared dataset folder (labels.json + images) instead of a photo")
    p.add_argument("--index", type=int, default=0, help="record of --prepared to invert (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", help="model to invert into (default: the shipped default model)")
    p.add_argument("--latent-steps", type=int, default=d.latent_steps, help="latent optimisation steps")
    p.add_argument("--tune-steps", type=int, default=d.tune_steps, help="pivotal tuning steps, radiance network")
    p.add_argument("--sr-steps", type=int, default=d.sr_steps, help="pivotal tuning steps, super-resolution")
    p.add_argument("--face-steps", type=int, default=d.face_steps,
                   help="face-texture tuning steps (a model without a face texture gets a fresh one)")
    p.add_argument("--detail-steps", type=int, default=d.detail_steps,
                   help="face-texture tuning steps on the output (super-resolved) renders, last")
    p.add_argument("--candidates", type=int, default=d.candidates, help="appearance codes tried as the start")
    p.add_argument("--opt-resolution", type=int, default=d.opt_resolution,
                   help="ray resolution of the latent and radiance-tuning renders")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--glb", action="store_true", help="also export the rigged avatar.glb")
    p.add_argument("--no-checks", action="store_true", help="skip the sheet, the turned-view checks and the "
                   "starting avatar's PSNR")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def main(argv: list[str] | None = None) -> int:
    from portrait_core.cli.errors import usage_error

    args = build_parser().parse_args(argv)
    if (args.photo is None) == (args.prepared is None):
        return usage_error("give a PHOTO or --prepared DIR (one of them)")
    for name in ("latent_steps", "tune_steps", "sr_steps", "face_steps", "detail_steps"):
        v = getattr(args, name)
        if not 0 <= v <= MAX_STEPS:
            return usage_error(f"--{name.replace('_', '-')} must be in [0, {MAX_STEPS}], got {v}")
    import torch

    from portrait_core.photo.invert import run_invert

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = InvertSettings(latent_steps=args.latent_steps, tune_steps=args.tune_steps, sr_steps=args.sr_steps,
                              face_steps=args.face_steps, detail_steps=args.detail_steps,
                              candidates=args.candidates,
                              opt_resolution=args.opt_resolution, seed=args.seed)
    last = [""]

    def progress(x: float, label: str) -> None:
        if label and label != last[0]:
            last[0] = label
            print(f"[{100 * x:3.0f}%] {label}", file=sys.stderr, flush=True)

    report = run_invert(args.out, photo=args.photo, prepared=args.prepared, index=args.index, settings=settings,
                        checkpoint=args.checkpoint, glb=args.glb, checks=not args.no_checks, progress=progress,
                        log=lambda m: print(m, file=sys.stderr))
    rec = report["reconstruction"]
    print(f"wrote {report['checkpoint']} (load it with --checkpoint; samplers beside it)")
    print(f"reconstruction at {rec['resolution']}^2: PSNR {rec['psnr_matte']:.2f} dB inside the matte, "
          f"{rec['psnr_face_region']:.2f} dB in its face region, {rec['psnr_face_camera']:.2f} dB face camera")
    if "initial_reconstruction" in report:
        ini = report["initial_reconstruction"]
        print(f"starting avatar: {ini['psnr_matte']:.2f} dB inside the matte, {ini['psnr_face_region']:.2f} dB face "
              f"region")
    for name, c in report.get("turned_views", {}).items():
        print(f"{name}: holes {100 * c['hole_fraction']:.2f} % of the head, landmark-shape drift "
              f"{100 * c['landmark_shape_drift']:.1f} % of the inter-ocular distance")
    if "sheet" in report:
        print(f"wrote {report['sheet']}")
    if "glb" in report:
        print(f"wrote {report['glb']}")
    t = report["timings"]
    print(f"time: invert + tune + bake {t['invert_tune_bake']:.0f} s, total {t['total']:.0f} s "
          f"({report['threads']} threads); report: {args.out}/report.json")
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
