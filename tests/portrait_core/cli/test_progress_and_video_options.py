"""Progress bars (video, sample, train.evaluate), the thread default shared by ``video`` and ``bench``, and
``video``'s ``--resolution`` / ``--fps`` / ``--batch``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_core.__main__ import main as cli_main
from portrait_core.cli.progress import auto_threads, progress, progress_enabled


def test_progress_bar_counts_and_rates_when_enabled():
    buf = io.StringIO()
    with progress("video", 3, enabled=True, stream=buf) as advance:
        for _ in range(3):
            advance(1)
    text = buf.getvalue()
    assert "video" in text and "3/3" in text and "s/frame" in text


def test_progress_is_silent_off_a_terminal(monkeypatch):
    monkeypatch.delenv("BUSTO_PROGRESS", raising=False)
    buf = io.StringIO()  # not a tty
    assert progress_enabled(buf) is False
    with progress("video", 2, stream=buf) as advance:
        advance(2)
    assert buf.getvalue() == ""
    monkeypatch.setenv("BUSTO_PROGRESS", "1")
    assert progress_enabled(buf) is True
    monkeypatch.setenv("BUSTO_PROGRESS", "0")
    assert progress_enabled(buf) is False


def test_auto_threads_takes_a_request_and_never_exceeds_torch_default(monkeypatch):
    import os

    assert auto_threads(3) == 3
    default = torch.get_num_threads()
    assert 1 <= auto_threads() <= default
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 0.0, 0.0))  # a saturated machine: one thread
    assert auto_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle one: torch's default (or the CPUs)
    assert auto_threads() == min(default, len(os.sched_getaffinity(0)))


def _busto_json(tmp_path, n=2):
    from portrait_core.geometry.keyframes import KeyframeTrack, save_keyframes_json

    pose = np.zeros((n, 6, 3))
    pose[-1, 3, 1] = 0.4
    return save_keyframes_json(KeyframeTrack(pose, np.zeros((n, 64))), tmp_path / "keys.json")


def test_video_resolution_fps_and_progress(tmp_path, monkeypatch, capsys):
    import imageio.v2 as imageio

    monkeypatch.setenv("BUSTO_PROGRESS", "1")
    keys = _busto_json(tmp_path)
    out = tmp_path / "v"
    assert cli_main(["video", "--keyframes", str(keys), "--n-interval", "3", "--no-loop", "--preset", "tiny",
                     "--resolution", "96", "--fps", "12", "--batch", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 4  # 1 interval x 3 frames + the last keyframe
    assert np.asarray(Image.open(frames[0])).shape == (96, 96, 3)  # tiny: x2 SR, so 48 rays
    assert "4/4" in captured.err and "s/frame" in captured.err
    assert "(96x96)" in captured.out and "12 fps" in captured.out
    reader = imageio.get_reader(out / "video.mp4")
    assert reader.get_meta_data()["fps"] == pytest.approx(12)
    assert reader.get_data(0).shape == (96, 96, 3)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("args, message", [
    (["--resolution", "33"], "--resolution: 33 is not a positive multiple of the super-resolution scale 2"),
    (["--resolution", "0"], "--resolution: 0 is not a positive multiple"),
    (["--fps", "0"], "--fps must be in (0, 240]"),
    (["--batch", "0"], "--batch must be >= 1"),
])
def test_video_rejects_bad_options_in_one_line(tmp_path, capsys, args, message):
    keys = _busto_json(tmp_path)
    out = tmp_path / "v"
    code = cli_main(["video", "--keyframes", str(keys), "--n-interval", "2", "--no-loop", "--preset", "tiny",
                     "--no-mp4", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (out / "video.mp4").exists()


def test_video_no_sr_resolution_is_the_ray_resolution(tmp_path):
    keys = _busto_json(tmp_path)
    out = tmp_path / "v"
    assert cli_main(["video", "--keyframes", str(keys), "--n-interval", "1", "--no-loop", "--preset", "tiny",
                     "--no-sr", "--no-mp4", "--resolution", "40", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out / "frames" / "frame_00000.png")).shape == (40, 40, 3)


def test_sample_shows_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BUSTO_PROGRESS", "1")
    out = tmp_path / "grid.png"
    assert cli_main(["sample", "--preset", "tiny", "--seeds", "0-1", "--yaws", "2", "--no-sr",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sample" in err and "2/2" in err and "s/avatar" in err


def test_evaluate_render_shows_progress(monkeypatch, capsys):
    from portrait_core.generator import Generator, generator_config
    from train.data import FakeInputs
    from train.evaluate import _render

    monkeypatch.setenv("BUSTO_PROGRESS", "1")
    torch.manual_seed(0)
    G = Generator(generator_config("tiny")).eval()
    n = 3
    from portrait_core import conventions as C
    from portrait_core.geometry.camera import Camera

    cam = Camera.portrait(yaw=torch.full((n,), C.FRONTAL_YAW), pitch=torch.full((n,), C.FRONTAL_PITCH))
    inputs = FakeInputs(torch.randn(n, 80), torch.randn(n, 80), torch.zeros(n, 64), torch.zeros(n, 10),
                        torch.zeros(n, 6, 3), cam.to_label25().float())
    portraits, _ = _render(G, inputs, super_resolve=False, batch=2)
    assert sum(p.shape[0] for p in portraits) == n
    err = capsys.readouterr().err
    assert "evaluate: render" in err and "3/3" in err and "s/image" in err
