"""torchrun with 2 CPU processes (gloo): 2 ranks x batch b == 1 rank x batch 2b, only rank 0 writes, and a 2-rank
checkpoint resumes on 1 rank.

Tolerance: the fake inputs, the real images, the regularisation points and the generator are identical in both
set-ups (global batches are sampled once and sliced per rank), so the two runs differ only in the order of
floating-point reductions (per-rank means averaged by all_reduce vs one mean). Step 1 losses (before any update)
agree to ~1e-6 relative; step 2 follows one Adam update, whose normalised steps can amplify round-off on
parameters with near-zero gradients, hence 2e-3 relative there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(dataset_root, recon, out, steps, batch):
    return ["tiny", f"data.root={dataset_root}", "data.generate_count=0", f"model.face_recon={recon}",
            f"run.out={out}", "run.progress=false", "run.tensorboard=false", f"run.steps={steps}", "run.log_every=1",
            "run.image_every=0", "run.eval_images=0", "run.ckpt_every=2", f"optim.batch={batch}"]


def _run(cmd, **env):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    for k in ("BUSTO_INJECT_NAN", "BUSTO_CKPT_SLEEP", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        e.pop(k, None)
    r = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _stats(run):
    return {r["step"]: r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if "D/total" in r}


@pytest.mark.slow
def test_two_ranks_match_one_rank_and_resume_on_one(dataset_root, face_recon_ckpt, tmp_path):
    if not _has_gloo():
        pytest.skip("torch.distributed with gloo is not available")
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "train", *_args(dataset_root, face_recon_ckpt, one, 2, 4)])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          "-m", "train", *_args(dataset_root, face_recon_ckpt, two, 2, 4)], BUSTO_DIST_BACKEND="gloo")
    # only rank 0 wrote: one run folder, one config, one log
    runs = list(two.iterdir())
    assert len(runs) == 1 and (runs[0] / "config.json").exists()
    env = json.loads((runs[0] / "env.json").read_text())
    assert env["world_size"] == 2
    a, b = _stats(next(one.iterdir())), _stats(runs[0])
    for step, tol in ((1, 1e-5), (2, 2e-3)):
        for k, v in a[step].items():
            if k.startswith(("D/", "G/")) and not k.endswith("pose_prior_weight"):
                assert b[step][k] == pytest.approx(v, rel=tol, abs=1e-7), (step, k)
    # the 2-rank checkpoint resumes in a single process
    _run([sys.executable, "-m", "train", *_args(dataset_root, face_recon_ckpt, two, 3, 4), "--resume", str(runs[0])])
    assert 3 in _stats(runs[0])


def _has_gloo() -> bool:
    import torch.distributed as td

    return td.is_available() and td.is_gloo_available()
