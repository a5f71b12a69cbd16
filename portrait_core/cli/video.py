"""``python -m portrait_core video``: drive one avatar with keyframes and write an MP4 plus PNG frames.

Keyframes: an official AniPortraitGAN folder (``expression.npy``, ``joint_eulers.npy``/``pose.npy``,
``camera_pose.npy``; choose other files with ``--pose-file`` etc.) or a Busto keyframe ``.json``. They are
interpolated over ``--key-interval`` (alias ``--n-interval``) frames per keyframe (looping back to the first, as the official script does).
Without a camera track the frontal portrait camera (or ``--yaw``/``--pitch``) is used.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait_core import conventions as C
from portrait_core.export.pipeline import DEFAULT_KEY_INTERVAL
from portrait_core.generator.loading import identity_for_seed, obtain_generator
from portrait_core.geometry.camera import Camera


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m portrait_core video", description=__doc__.split("\n")[0])
    p.add_argument("--keyframes", required=True, help="official keyframe folder or Busto keyframe .json")
    p.add_argument("--pose-file", default="auto", help="official folder: pose file name, or 'none'")
    p.add_argument("--expression-file", default="auto", help="official folder: expression file name, or 'none'")
    p.add_argument("--camera-file", default="auto", help="official folder: camera file name, or 'none'")
    p.add_argument("--key-interval", "--n-interval", dest="n_interval", type=int, default=DEFAULT_KEY_INTERVAL,
                   help=f"frames between consecutive keyframes ({DEFAULT_KEY_INTERVAL}, as `export --key-interval`)")
    p.add_argument("--no-loop", action="store_true", help="end on the last keyframe instead of looping back")
    p.add_argument("--rotation", default="slerp", choices=["slerp", "euler", "axis_angle"])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="generator .safetensors or training checkpoint folder (default: the shipped "
                     "default model, else a random-init preset)")
    src.add_argument("--preset", help="random-init preset when no checkpoint is used: paper, small, tiny")
    p.add_argument("--mode", choices=["frontal", "360"], help="render mode for a random-init preset")
    p.add_argument("--seed", type=int, default=0, help="latent seed of the avatar")
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--yaw", type=float, default=C.FRONTAL_YAW, help="camera yaw when the keyframes have none")
    p.add_argument("--pitch", type=float, default=C.FRONTAL_PITCH, help="camera pitch when the keyframes have none")
    p.add_argument("--fps", type=float, default=None, help="video frame rate (default: the keyframes' fps)")
    p.add_argument("--resolution", type=int, default=None, help="output image size in pixels (default: the model's; "
                   "a multiple of its super-resolution scale, which sets the ray resolution)")
    p.add_argument("--batch", type=int, default=1, help="frames rendered per call (1 is fastest on a CPU: batch 4 "
                   "cost 2x per frame)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the cores not busy with "
                   "other work, as `bench` runs)")
    p.add_argument("--no-sr", action="store_true", help="render the low-resolution image")
    p.add_argument("--no-mp4", action="store_true", help="only write PNG frames")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-seed", type=int, default=0, help="weight seed of a random-init preset")
    p.add_argument("--out", required=True, help="output folder (frames/frame_00000.png ..., video.mp4)")
    return p


def _file_choice(value: str):
    return None if value.lower() == "none" else value


def ray_resolution(g, resolution: int | None, super_resolve: bool) -> int | None:
    """Ray resolution for an output ``resolution`` (None: the model's): the output divided by the
    super-resolution scale when super-resolving. Raises ValueError for a size that is not a positive multiple."""
    if resolution is None:
        return None
    scale = g.cfg.superres.scale if super_resolve else 1
    if resolution < 1 or resolution % scale:
        raise ValueError(f"{resolution} is not a positive multiple of the super-resolution scale {scale}")
    if resolution // scale > 1024:
        raise ValueError(f"{resolution} px needs {resolution // scale} rays per side; at most 1024")
    return resolution // scale


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image

    from portrait_core.geometry.keyframes import KeyframeError, interpolate_keyframes, load_keyframes

    path = Path(args.keyframes)
    kwargs = {}
    if path.is_dir():
        kwargs = {"pose": _file_choice(args.pose_file), "expression": _file_choice(args.expression_file),
                  "camera": _file_choice(args.camera_file)}
    track = load_keyframes(path, **kwargs)  # KeyframeError names the file; reported by run_cli
    try:
        frames = interpolate_keyframes(track, args.n_interval, loop=not args.no_loop, rotation=args.rotation)
    except ValueError as e:
        raise KeyframeError(f"{path}: {e}") from e
    from portrait_core.cli.errors import usage_error
    from portrait_core.cli.progress import auto_threads, progress

    if args.batch < 1:
        return usage_error(f"--batch must be >= 1, got {args.batch}")
    if args.fps is not None and not 0 < args.fps <= 240:
        return usage_error(f"--fps must be in (0, 240], got {args.fps:g}")
    torch.set_num_threads(auto_threads(args.threads))
    g = obtain_generator(args.checkpoint, args.preset, args.device, args.mode, args.model_seed)
    super_resolve = not args.no_sr and g.superres is not None
    try:
        rays = ray_resolution(g, args.resolution, super_resolve)
    except ValueError as e:
        return usage_error(f"--resolution: {e}")
    data = frames.to_torch(dtype=torch.float32, device=g.device)
    n = data["pose"].shape[0]
    if data["camera"] is not None:
        pitch, yaw = data["camera"][:, 0], data["camera"][:, 1]
    else:
        pitch = torch.full((n,), args.pitch, device=g.device)
        yaw = torch.full((n,), args.yaw, device=g.device)
    out_dir = Path(args.out)
    frame_dir = out_dir / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    fps = args.fps or track.fps
    video_path = out_dir / "video.mp4"
    t0 = time.perf_counter()
    with torch.no_grad(), contextlib.ExitStack() as stack:
        latents, body_shape = identity_for_seed(g, args.seed)
        avatar = g.make_avatar(latents, body_shape, truncation=args.truncation, super_resolve=super_resolve)
        bake_s = time.perf_counter() - t0
        writer: Any = None  # imageio's writer (its type stubs do not declare append_data)
        if not args.no_mp4:
            import imageio.v2 as imageio

            from portrait_core.atomic import atomic_path

            tmp = stack.enter_context(atomic_path(video_path, suffix=".mp4"))
            writer = stack.enter_context(imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8,
                                                            macro_block_size=1))
        advance = stack.enter_context(progress("video", n))
        t1 = time.perf_counter()
        for start in range(0, n, args.batch):
            sl = slice(start, min(n, start + args.batch))
            camera = Camera.portrait(yaw=yaw[sl], pitch=pitch[sl])
            out = avatar.render(data["pose"][sl], data["expression"][sl], camera, super_resolve=super_resolve,
                                resolution=rays, low_resolution=False)
            rgb = ((out.image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            for i, img in enumerate(rgb):
                Image.fromarray(img).save(frame_dir / f"frame_{start + i:05d}.png", compress_level=1)
                if writer is not None:
                    writer.append_data(np.ascontiguousarray(img))
            advance(len(rgb))
        frame_s = (time.perf_counter() - t1) / max(n, 1)
    size = rgb.shape[1] if n else 0
    msg = (f"wrote {n} frames ({size}x{size}) to {frame_dir}"
           + ("" if args.no_mp4 else f" and {video_path} ({fps:g} fps)")
           + f"; bake {bake_s:.1f} s, {frame_s:.3f} s/frame with {torch.get_num_threads()} thread(s)")
    print(msg)
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
