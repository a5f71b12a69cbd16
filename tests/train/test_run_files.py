"""Issue 19 item 9 for training runs: files are created with the umask's permissions (not mkstemp's 0600),
``best.json`` never names a checkpoint that does not exist, ``stats.jsonl`` holds each step once after a resume;
item 8: ``python -m train`` reports a corrupt ``model.face_recon`` as one error line."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from tests.train.conftest import tiny_cfg
from train import checkpoint as ck
from train.loop import train


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _run(tmp_path: Path) -> Path:
    return next(p for p in tmp_path.iterdir() if p.is_dir())


def test_checkpoint_files_are_readable_by_others_and_best_follows_its_checkpoint(
        dataset_root, face_recon_ckpt, tmp_path, dataset_reader, umask022):
    cfg = tiny_cfg(dataset_root, tmp_path / "runs", face_recon_ckpt, steps=2, ckpt_every=1, log_every=1,
                   image_every=0, eval_images=8)
    assert train(cfg) == 0
    root = _run(tmp_path / "runs") / "checkpoints"
    best = ck.read_best(root)
    assert best is not None and (root / best["checkpoint"] / ck.STATE_FILE).is_file()
    for p in (root / "step-00000002" / ck.GENERATOR_FILE, root / "step-00000002" / ck.STATE_FILE,
              root / ck.LATEST, root / ck.BEST, root.parent / "config.json"):
        assert _mode(p) == 0o644, (p, oct(_mode(p)))


def test_best_json_is_not_written_before_its_checkpoint(dataset_root, face_recon_ckpt, tmp_path, dataset_reader,
                                                         monkeypatch):
    """A failure while writing the first checkpoint (disk full, kill) must not leave a best.json naming it."""
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[0]))

    monkeypatch.setattr(ck, "write_checkpoint", fail)
    cfg = tiny_cfg(dataset_root, tmp_path / "runs", face_recon_ckpt, steps=1, ckpt_every=1, image_every=0,
                   eval_images=8)
    with pytest.raises(OSError):
        train(cfg)
    root = _run(tmp_path / "runs") / "checkpoints"
    best = ck.read_best(root)
    assert best is None or (root / best["checkpoint"]).is_dir(), best


def test_stats_jsonl_has_each_step_once_after_a_resume(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    """Steps 3-4 logged, then the run dies before checkpoint 4: the resume from step 2 replays 3-4."""
    cfg = tiny_cfg(dataset_root, tmp_path / "runs", face_recon_ckpt, steps=4, ckpt_every=2, log_every=1,
                   image_every=0, eval_images=8)
    assert train(cfg) == 0
    run = _run(tmp_path / "runs")
    root = run / "checkpoints"
    import shutil

    shutil.rmtree(root / "step-00000004")  # as if killed between logging step 4 and its checkpoint
    ck.atomic_write_text(root / ck.LATEST, "step-00000002\n")
    ck.write_best(root, "step-00000004", "swd", 0.0, 4)  # a stale pointer of the old order
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"step": 4, "D/tot')  # and a line torn by the kill
    assert train(replace(cfg, run=replace(cfg.run, steps=4)), resume="auto") == 0
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "D/total" in r]
    assert steps == [1, 2, 3, 4], steps
    best = ck.read_best(root)
    assert (root / best["checkpoint"]).is_dir()


def test_logger_resume_at_drops_rows_past_the_step(tmp_path):
    from train.run import Logger

    lg = Logger(tmp_path, 10, 0, progress=False, tensorboard=False)
    for s in (1, 2, 3, 4):
        lg.scalars(s, {"x": float(s)})
    assert lg.resume_at(2) == 2
    lg.scalars(3, {"x": 30.0})
    lg.close()
    rows = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [(r["step"], r["x"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_train_corrupt_face_recon_is_one_error_line(dataset_root, tmp_path, dataset_reader, capsys):
    from train.__main__ import main

    bad = tmp_path / "recon.pt"
    bad.write_bytes(b"not a torch file")
    rc = main(["tiny", f"data.root={dataset_root}", "data.generate_count=0", f"model.face_recon={bad}",
               f"run.out={tmp_path / 'runs'}", "run.steps=1", "run.progress=false", "run.tensorboard=false"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in err, err
