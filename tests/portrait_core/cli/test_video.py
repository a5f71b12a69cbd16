"""``python -m portrait_core video`` with the official keyframe fixtures and Busto JSON."""

from __future__ import annotations

import numpy as np
from PIL import Image

from portrait_core.__main__ import main as cli_main


def test_video_from_official_keyframes(tmp_path, keyframes_dir):
    out = tmp_path / "video"
    code = cli_main(["video", "--keyframes", str(keyframes_dir), "--pose-file", "headpose.npy",
                     "--expression-file", "none", "--n-interval", "2", "--preset", "tiny", "--out", str(out)])
    assert code == 0
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 4 * 2  # 4 keyframes x 2, looping back to the first
    assert np.asarray(Image.open(frames[0])).shape == (64, 64, 3)
    assert (out / "video.mp4").stat().st_size > 1000


def test_video_reports_mismatched_official_files(tmp_path, keyframes_dir, capsys):
    # expression.npy has 5 keyframes and pose.npy 4: the user must choose
    code = cli_main(["video", "--keyframes", str(keyframes_dir), "--preset", "tiny", "--no-mp4",
                     "--out", str(tmp_path / "v")])
    assert code == 2
    assert "counts differ" in capsys.readouterr().err


def test_video_from_busto_json_with_a_camera_track(tmp_path):
    from portrait_core.geometry.keyframes import KeyframeTrack, save_keyframes_json

    pose = np.zeros((2, 6, 3))
    pose[1, 3, 1] = 0.4
    track = KeyframeTrack(pose, np.zeros((2, 64)), camera=np.array([[np.pi / 2, np.pi / 2], [np.pi / 2, 2.0]]))
    path = save_keyframes_json(track, tmp_path / "keys.json")
    out = tmp_path / "v"
    assert cli_main(["video", "--keyframes", str(path), "--n-interval", "2", "--no-loop", "--preset", "tiny",
                     "--no-sr", "--no-mp4", "--out", str(out)]) == 0
    frames = sorted((out / "frames").glob("*.png"))
    assert len(frames) == 3
    first, last = (np.asarray(Image.open(f)).astype(float) for f in (frames[0], frames[-1]))
    assert first.shape == (32, 32, 3) and np.abs(first - last).mean() > 0.1  # the camera moved
