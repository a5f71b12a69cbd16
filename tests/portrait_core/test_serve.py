"""``python -m portrait_core serve``: the worker protocol end to end in a real subprocess (no bpy)."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_core import serve
from portrait_core.geometry.camera import Camera

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from portrait_core.generator import Generator, generator_config, save_generator

    path = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    torch.manual_seed(0)
    save_generator(path, Generator(generator_config("tiny")))
    return path


class Worker:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "portrait_core", "serve"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)

    def ask(self, header, arrays=None):
        serve.write_message(self.proc.stdin, header, arrays)
        progress = []
        while True:
            reply, out = serve.read_message(self.proc.stdout)
            if "progress" in reply:
                progress.append(reply["progress"])
                continue
            return reply, out, progress


def test_worker_protocol_end_to_end(checkpoint):
    w = Worker()
    try:
        reply, _, _ = w.ask({"op": "render", "avatar": {}})
        assert reply["ok"] is False and "no model loaded" in reply["error"]
        reply, _, _ = w.ask({"op": "load", "checkpoint": str(checkpoint.parent / "missing.safetensors")})
        assert reply["ok"] is False and "missing.safetensors: no such checkpoint file" in reply["error"]
        reply, _, progress = w.ask({"op": "load", "checkpoint": str(checkpoint), "device": "cpu"})
        assert reply["ok"] and reply["preset"] == "tiny" and reply["output_resolution"] == 64 and progress
        avatar = {"seed": 5, "truncation": 0.7, "body_shape": [0.0] * 10, "super_resolve": True}
        reply, out, _ = w.ask({"op": "sample", "avatar": avatar, "preview_size": 32},
                              {"preview_yaws": np.array([math.pi / 2, math.pi])})
        assert reply["ok"] and out["preview"].shape == (2, 32, 32, 4) and out["joint_positions"].shape == (24, 3)
        assert np.allclose(out["joint_positions"][12], 0.0, atol=1e-6)  # canonical frame: origin at the neck
        cam = Camera.portrait(torch.tensor([math.pi / 2, math.pi / 2 + 0.4]))
        arrays = {"pose": np.zeros((2, 6, 3), np.float32), "expression": np.zeros((2, 64), np.float32),
                  "cam2world": cam.cam2world.numpy(), "intrinsics": cam.intrinsics.numpy()}
        reply, out, _ = w.ask({"op": "render", "avatar": avatar, "size": 48}, arrays)
        assert reply["ok"] and out["rgba"].shape == (2, 48, 48, 4) and out["rgba"].dtype == np.float32
        assert 0.0 <= out["rgba"].min() and out["rgba"].max() <= 1.0
        assert not np.array_equal(out["rgba"][0], out["rgba"][1])
        # the same frame in this process through the same Session code gives the same pixels
        s = serve.Session()
        s.handle("load", {"checkpoint": str(checkpoint)}, {})
        _, local = s.handle("render", {"avatar": avatar, "size": 48}, arrays)
        assert np.abs(local["rgba"] - out["rgba"]).max() < 1e-5
        reply, _, _ = w.ask({"op": "render", "avatar": avatar}, {"pose": arrays["pose"][:, :5]})
        assert reply["ok"] is False and "pose must be [N, 6, 3]" in reply["error"]
        reply, _, _ = w.ask({"op": "frobnicate"})
        assert reply["ok"] is False and "unknown operation" in reply["error"]
        reply, _, _ = w.ask({"op": "shutdown"})
        assert reply["ok"] and w.proc.wait(timeout=30) == 0
    finally:
        if w.proc.poll() is None:
            w.proc.kill()


def test_stray_prints_do_not_corrupt_the_protocol(checkpoint, monkeypatch):
    """Everything printed inside the worker goes to stderr; stdout carries only messages."""
    r = subprocess.run(
        [sys.executable, "-c", "import portrait_core.serve as s, sys\n"
         "hello = s.Session.op_hello\n"
         "def noisy(self, *a):\n    print('noise'); return hello(self, *a)\n"
         "s.Session.op_hello = noisy\nsys.exit(s.main())"],
        cwd=ROOT, input=_encode({"op": "hello"}) + _encode({"op": "shutdown"}), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    stream = io.BytesIO(r.stdout)
    hello, _ = serve.read_message(stream)
    assert hello["ok"] and hello["protocol"] == serve.PROTOCOL_VERSION
    assert serve.read_message(stream)[0]["bye"] is True
    assert b"noise" not in r.stdout and b"noise" in r.stderr


def _encode(header, arrays=None) -> bytes:
    buf = io.BytesIO()
    serve.write_message(buf, header, arrays)
    return buf.getvalue()


def test_default_checkpoint_error_is_clear(monkeypatch, tmp_path):
    import portrait_core.generator.loading as loading

    monkeypatch.setattr(loading, "default_checkpoint", lambda: tmp_path / "assets" / "default.safetensors")
    with pytest.raises(serve.ServeError, match="no model shipped"):
        serve.default_checkpoint()
