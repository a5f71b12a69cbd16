"""Run management in real subprocesses: SIGKILL during a checkpoint write keeps the previous checkpoint
loadable; SIGTERM saves a checkpoint and exits; the killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[2]
DRIVER = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from tests.train.conftest import install_reader_if_needed, tiny_cfg
install_reader_if_needed()
from train.loop import train
data, out, recon, steps, resume = sys.argv[1:6]
cfg = tiny_cfg(Path(data), Path(out), Path(recon), steps=int(steps), ckpt_every=2, log_every=1, image_every=0,
               eval_images=0)
sys.exit(train(cfg, resume=resume or None))
"""


def _spawn(args, **env):
    e = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    e.pop("BUSTO_INJECT_NAN", None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pred, proc, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            raise AssertionError(f"process exited early ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_sigkill_mid_write_then_sigterm_then_resume(dataset_root, face_recon_ckpt, tmp_path):
    out = tmp_path / "runs"
    # 1. SIGKILL while the second checkpoint (step 4) is being written
    p = _spawn([dataset_root, out, face_recon_ckpt, 6, ""], BUSTO_CKPT_SLEEP="60@2")
    ckpts = lambda: next(out.iterdir()) / "checkpoints" if out.exists() and any(out.iterdir()) else None  # noqa: E731
    _wait_for(lambda: ckpts() is not None and any(ckpts().glob(".tmp-step-00000004-*")), p)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    root = ckpts()
    latest = ck.latest_checkpoint(root)
    assert latest.name == "step-00000002"
    assert ck.load_state(latest)["step"] == 2
    from portrait_core.generator import load_generator

    load_generator(latest / ck.GENERATOR_FILE)
    assert not (root / "step-00000004").exists()

    # 2. resume; SIGTERM after two more steps -> checkpoint at the current step, exit 128+15
    p = _spawn([dataset_root, out, face_recon_ckpt, 200, "auto"])
    stats = root.parent / "stats.jsonl"
    steps = lambda: [json.loads(x)["step"] for x in stats.read_text().splitlines() if '"D/total"' in x]  # noqa: E731
    n_before = len(steps())  # the killed run had logged steps 1..4
    _wait_for(lambda: len(steps()) >= n_before + 2, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(120) == 128 + signal.SIGTERM
    log = p.stdout.read()
    assert "stopped by signal SIGTERM" in log, log
    latest = ck.latest_checkpoint(root)
    state = ck.load_state(latest)
    assert state["step"] == max(steps()) and state["step"] >= 3
    assert not list(root.glob(".tmp-step-*")), "leftover temporary folder of the killed write was not cleaned"
    assert "resumed from" in (root.parent / "log.txt").read_text()
