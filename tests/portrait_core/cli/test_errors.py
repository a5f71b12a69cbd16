"""Every command-line entry point reports a user error as exactly one ``error: <file>: <problem>`` line on stderr
and a non-zero exit, with no traceback unless ``--debug`` or ``BUSTO_DEBUG=1`` asks for it (issue 19, item 8)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portrait_core.cli.errors import describe_error, report_error, run_cli, split_debug

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("BUSTO_DEBUG", raising=False)


@pytest.fixture()
def bad(tmp_path) -> dict[str, Path]:
    """Corrupt inputs of each kind: a non-safetensors checkpoint, a dataset with broken labels.json, a broken
    keyframe JSON, a non-pickle SMPL file."""
    ckpt = tmp_path / "corrupt.safetensors"
    ckpt.write_bytes(b"garbage, not a safetensors header")
    ds = tmp_path / "broken_ds"
    ds.mkdir()
    (ds / "labels.json").write_text("{not json")
    kf = tmp_path / "keys.json"
    kf.write_text('{"format": "busto-keyframes", "keyframes": [')
    smpl = tmp_path / "smpl.pkl"
    smpl.write_bytes(b"\x80\x04garbage")
    return {"ckpt": ckpt, "ds": ds, "kf": kf, "smpl": smpl, "out": tmp_path / "out"}


def assert_one_error_line(err: str, rc: int, names: str | Path) -> str:
    """Exactly one ``error:`` line naming ``names``, a non-zero exit, no traceback; returns the line."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc != 0, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert str(names) in lines[0], (names, lines[0])
    return lines[0]


def _pc(argv, capsys):
    from portrait_core.__main__ import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_sample_corrupt_and_missing_checkpoint(bad, capsys):
    rc, err = _pc(["sample", "--checkpoint", str(bad["ckpt"]), "--out", str(bad["out"] / "g.png")], capsys)
    line = assert_one_error_line(err, rc, bad["ckpt"])
    assert rc == 2 and "safetensors" in line
    missing = bad["out"] / "nope.safetensors"
    rc, err = _pc(["sample", "--checkpoint", str(missing)], capsys)
    assert "no such" in assert_one_error_line(err, rc, missing)
    rc, err = _pc(["sample", "--preset", "tiny", "--seeds", "5-2"], capsys)
    assert_one_error_line(err, rc, "--seeds")
    assert not (bad["out"] / "g.png").exists()


def test_preview_body_corrupt_smpl(bad, capsys):
    rc, err = _pc(["preview-body", "--out", str(bad["out"]), "--smpl", str(bad["smpl"]), "--only", "canonical"],
                  capsys)
    assert_one_error_line(err, rc, bad["smpl"])


def test_video_corrupt_keyframes(bad, capsys):
    rc, err = _pc(["video", "--keyframes", str(bad["kf"]), "--preset", "tiny", "--out", str(bad["out"])], capsys)
    assert_one_error_line(err, rc, bad["kf"])


def test_export_and_bench_corrupt_checkpoint(bad, capsys):
    rc, err = _pc(["export", "--checkpoint", str(bad["ckpt"]), "--out", str(bad["out"] / "a.glb")], capsys)
    assert_one_error_line(err, rc, bad["ckpt"])
    rc, err = _pc(["export", "--preset", "tiny", "--level", "high", "--out", str(bad["out"] / "a.glb")], capsys)
    assert_one_error_line(err, rc, "--level")
    rc, err = _pc(["bench", "--presets", str(bad["ckpt"]), "--resolutions", "32", "--frames", "1"], capsys)
    assert_one_error_line(err, rc, bad["ckpt"])


def test_unknown_command(capsys):
    rc, err = _pc(["no-such-command"], capsys)
    assert_one_error_line(err, rc, "no-such-command")


@pytest.mark.parametrize("command", ["stats", "pack", "convert", "validate"])
def test_data_commands_broken_labels(bad, capsys, command):
    from portrait_core.data.__main__ import main

    argv = [command, str(bad["ds"])]
    if command != "validate":
        argv += ["--out", str(bad["out"] / ("p.zip" if command == "pack" else "x"))]
    rc = main(argv)
    err = capsys.readouterr().err
    if command == "validate":  # the model the others follow: problems on stdout, exit 1
        assert rc == 1 and "Traceback" not in err
        return
    line = assert_one_error_line(err, rc, bad["ds"] / "labels.json")
    assert "JSON" in line
    assert not (bad["out"] / "p.zip").exists()


def test_data_missing_root(tmp_path, capsys):
    from portrait_core.data.__main__ import main

    rc = main(["stats", str(tmp_path / "absent"), "--out", str(tmp_path / "s")])
    assert_one_error_line(capsys.readouterr().err, rc, tmp_path / "absent")


def test_evaluate_corrupt_checkpoint(bad, capsys):
    from train.evaluate import main

    rc = main([str(bad["ckpt"]), "--images", "2", "--metrics", "swd", "--out", str(bad["out"] / "e.json")])
    assert_one_error_line(capsys.readouterr().err, rc, bad["ckpt"])
    assert not (bad["out"] / "e.json").exists()


def test_contact_sheet_corrupt_checkpoint(bad, capsys):
    from portrait_core.assets.contact_sheet import main

    rc = run_cli(main, ["--checkpoint", str(bad["ckpt"]), "--out", str(bad["out"] / "s.png")])
    assert_one_error_line(capsys.readouterr().err, rc, bad["ckpt"])


def test_train_missing_data_root(tmp_path, capsys):
    from train.__main__ import main

    absent = tmp_path / "absent_data"
    rc = main(["tiny", f"data.root={absent}", "data.generate_count=0", f"run.out={tmp_path / 'runs'}"])
    assert_one_error_line(capsys.readouterr().err, rc, absent)


# ---------------------------------------------------------------------------------------------- the helper
def test_split_debug_removes_the_flag_before_a_bare_double_dash():
    assert split_debug(["a", "--debug", "b"]) == (True, ["a", "b"])
    assert split_debug(["a", "--", "--debug"]) == (False, ["a", "--", "--debug"])
    assert split_debug([]) == (False, [])


def test_run_cli_user_error_unexpected_error_and_debug(monkeypatch, capsys, tmp_path):
    def missing(argv):
        open(tmp_path / "absent.txt")

    def bug(argv):
        raise KeyError("x")

    assert run_cli(missing, []) == 2
    line = assert_one_error_line(capsys.readouterr().err, 2, tmp_path / "absent.txt")
    assert "No such file" in line
    assert run_cli(bug, []) == 1
    line = assert_one_error_line(capsys.readouterr().err, 1, "KeyError")
    assert "--debug" in line
    with pytest.raises(FileNotFoundError):
        run_cli(missing, ["--debug"])
    monkeypatch.setenv("BUSTO_DEBUG", "1")
    with pytest.raises(KeyError):
        run_cli(bug, [])
    monkeypatch.setenv("BUSTO_DEBUG", "0")
    assert run_cli(bug, []) == 1
    assert run_cli(lambda argv: len(argv), ["a", "--debug", "b"]) == 2  # main never sees --debug


def test_several_problems_one_error_line_rest_indented():
    from portrait_core.data.labels import LabelError

    buf = io.StringIO()
    report_error(LabelError(["a.json: x: bad", "a.json: y: worse", "a.json: z: worst"]), True, buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "error: a.json: x: bad (and 2 more problem(s):)"
    assert lines[1:] == ["  a.json: y: worse", "  a.json: z: worst"]


def test_describe_error_names_the_file():
    assert describe_error(FileNotFoundError(2, "No such file or directory", "/x/y")) == \
        "/x/y: No such file or directory"
    assert describe_error(ValueError("f.json: line\n two")) == "f.json: line two"
    assert describe_error(MemoryError()) == "out of memory"


def test_python_m_subprocess_one_line_and_debug_traceback(bad):
    """The real ``python -m`` entry points: one line by default; --debug and BUSTO_DEBUG=1 show the traceback."""
    env = {k: v for k, v in os.environ.items() if k != "BUSTO_DEBUG"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    base = [sys.executable, "-m", "portrait_core.data", "stats", str(bad["ds"]), "--out", str(bad["out"])]
    p = subprocess.run(base, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 2
    assert_one_error_line(p.stderr, p.returncode, bad["ds"] / "labels.json")
    p = subprocess.run(base + ["--debug"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 1 and "Traceback" in p.stderr and "LabelError" in p.stderr
    p = subprocess.run(base, capture_output=True, text=True, env={**env, "BUSTO_DEBUG": "1"}, cwd=ROOT, timeout=120)
    assert p.returncode == 1 and "Traceback" in p.stderr
    # keyframe JSON that is not JSON, through python -m portrait_core
    p = subprocess.run([sys.executable, "-m", "portrait_core", "video", "--keyframes", str(bad["kf"]), "--preset",
                        "tiny", "--out", str(bad["out"])], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=120)
    assert_one_error_line(p.stderr, p.returncode, bad["kf"])
