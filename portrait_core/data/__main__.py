"""``python -m portrait_core.data COMMAND``: synth | stats | validate | pack | convert | prepare (see docs/data-format.md,
docs/photo.md)."""

from __future__ import annotations

import argparse
import sys


def _synth(a: argparse.Namespace) -> int:
    from .synth import synthesize

    path = synthesize(a.out, a.count, resolution=a.resolution, yaw_mode=a.yaw, seed=a.seed,
                      face_resolution=a.face_resolution, meshes=a.meshes, workers=a.workers, samples=a.samples,
                      views_per_identity=a.views_per_identity, progress=not a.quiet)
    print(f"wrote {path}")
    return 0


def _stats(a: argparse.Namespace) -> int:
    from .stats import write_stats

    for p in write_stats(a.root, a.out, sheet_count=a.sheet_count):
        print(f"wrote {p}")
    return 0


def _validate(a: argparse.Namespace) -> int:
    from .labels import validate_labels

    problems = validate_labels(a.root, check_files=True, check_images=a.images)
    for p in problems:
        print(p)
    print(f"{a.root}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def _pack(a: argparse.Namespace) -> int:
    from .pack import default_archive_path, pack_dataset

    path, nbytes = pack_dataset(a.root, a.out or default_archive_path(a.root), resolution=a.resolution, face_resolution=a.face_resolution,
                                quality=a.quality)
    print(f"wrote {path} ({nbytes / 1e6:.2f} MB)")
    return 0


def _convert(a: argparse.Namespace) -> int:
    from .readers import convert

    path = convert(a.source, a.out, fmt=a.format, resolution=a.resolution, face_resolution=a.face_resolution,
                   mask_zip=a.masks, on_error=a.on_error, smpl=a.smpl)
    print(f"wrote {path}")
    return 0


def _prepare(a: argparse.Namespace) -> int:
    from portrait_core.photo.prepare import prepare

    face = body = None
    if a.bfm:
        from portrait_core.face import FaceModel

        face = FaceModel.from_mat(a.bfm)
    if a.smpl:
        from portrait_core.body.model import BodyModel

        body = BodyModel.from_file(a.smpl)

    def progress(i: int, n: int, r) -> None:
        if isinstance(r, Exception):
            print(f"[{i + 1}/{n}] skipped: {r}")
            return
        notes = f" ({'; '.join(r.notes)})" if r.notes else ""
        print(f"[{i + 1}/{n}] {r.source}: landmark error {100 * r.landmark_error:.2f}% of the inter-ocular distance, "
              f"{sum(r.timings.values()):.1f} s{notes}")

    path = prepare(a.photos, a.out, resolution=a.resolution, face_resolution=a.face_resolution, face_model=face,
                   body_model=body, on_error=a.on_error, progress=None if a.quiet else progress)
    print(f"wrote {path} (labels.json, images/, masks/, faces/, contact_sheet.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m portrait_core.data", description=__doc__,
                                 epilog="Errors print one 'error: <file>: <problem>' line; --debug (or "
                                        "BUSTO_DEBUG=1) shows the traceback.")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render a synthetic labelled portrait dataset with Blender Cycles (CPU)")
    s.add_argument("--out", required=True, help="output folder (resumes if it holds the same settings)")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--resolution", type=int, default=128, help="portrait size in pixels (square)")
    s.add_argument("--face-resolution", type=int, default=None, help="face crop size (default: --resolution)")
    s.add_argument("--yaw", choices=("frontal", "360"), default="frontal",
                   help="frontal: yaw ~ N(pi/2, 0.3); 360: uniform over the full circle")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--meshes", action="store_true", help="also write posed and canonical PLY meshes per image")
    s.add_argument("--workers", type=int, default=2, help="Blender processes (one CPU thread each)")
    s.add_argument("--samples", type=int, default=4, help="Cycles samples per pixel")
    s.add_argument("--views-per-identity", type=int, default=1, help="consecutive images sharing one avatar")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_synth)

    s = sub.add_parser("stats", help="contact sheet and label histograms (PNG) of a dataset")
    s.add_argument("root", help="dataset folder or packed archive (.zip)")
    s.add_argument("--out", required=True)
    s.add_argument("--sheet-count", type=int, default=64)
    s.set_defaults(func=_stats)

    s = sub.add_parser("validate", help="check labels.json and the files it names; exit 1 on problems")
    s.add_argument("root")
    s.add_argument("--images", action="store_true", help="also decode every image, mask and face crop")
    s.set_defaults(func=_validate)

    s = sub.add_parser("pack", help="one compact archive (zip of WebP/PNG + labels.json) of a dataset")
    s.add_argument("root")
    s.add_argument("--out", default=None, help="archive path (.zip; default: beside the dataset, out/synth -> "
                   "out/synth.zip)")
    s.add_argument("--resolution", type=int, default=None, help="resize portraits (default: keep)")
    s.add_argument("--face-resolution", type=int, default=None, help="resize face crops (default: keep)")
    s.add_argument("--quality", type=int, default=85, help="WebP quality of portraits and face crops")
    s.set_defaults(func=_pack)

    s = sub.add_parser("convert", help="convert SHHQ-HS-style or 360PHQ data to Busto's format")
    s.add_argument("source", help="SHHQ-HS folder, or 360PHQ dataset.json folder/zip")
    s.add_argument("--out", required=True)
    s.add_argument("--format", choices=("auto", "busto", "shhq", "phq360"), default="auto")
    s.add_argument("--masks", default=None, help="360PHQ: the separate mask zip or folder (same stems)")
    s.add_argument("--resolution", type=int, default=None, help="resize portraits (default: keep)")
    s.add_argument("--face-resolution", type=int, default=128)
    s.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    s.add_argument("--smpl", default=None, help="SMPL model file for the face cameras (default: synthetic body)")
    s.set_defaults(func=_convert)

    s = sub.add_parser("prepare", help="photos -> a labelled dataset: landmarks, 3DMM + body fit, matte, crops "
                                       "(needs the photo extra)")
    s.add_argument("photos", nargs="+", metavar="PHOTO_OR_DIR", help="photos and/or folders of photos")
    s.add_argument("--out", required=True, help="new dataset folder (must not exist, or be empty)")
    s.add_argument("--resolution", type=int, default=128, help="portrait size in pixels (square)")
    s.add_argument("--face-resolution", type=int, default=64, help="face crop size in pixels")
    s.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="skip: leave out photos that cannot be prepared (listed in info.skipped)")
    s.add_argument("--bfm", default=None, help="fit BFM09 (BFM_model_front.mat) instead of the synthetic 3DMM")
    s.add_argument("--smpl", default=None, help="fit this SMPL model file instead of the synthetic body")
    s.add_argument("--quiet", action="store_true", help="no per-photo lines")
    s.set_defaults(func=_prepare)
    return ap


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one data command; errors are one ``error:`` line (``--debug``/``BUSTO_DEBUG=1``: the traceback)."""
    from portrait_core.cli.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
