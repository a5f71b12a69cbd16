"""Hostile keyframe files give a KeyframeError naming the file, never EOFError/MemoryError/OverflowError/
RecursionError or a traceback (issue 19, item 7), and limits are checked before anything is allocated."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portrait_core.geometry.keyframes import (
    MAX_INTERPOLATED_FRAMES,
    KeyframeError,
    KeyframeTrack,
    interpolate_keyframes,
    load_keyframes_json,
    load_official_keyframes,
)

BASE = {"format": "busto-keyframes", "format_version": 1, "keyframes": [{"pose": [[0, 0, 0]] * 6}]}


def _npy_header(shape, descr="<f8") -> bytes:
    hdr = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    hdr += b" " * (118 - len(hdr)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr


def _official(tmp_path, data: bytes):
    d = tmp_path / "kf"
    d.mkdir()
    (d / "expression.npy").write_bytes(data)
    return d


@pytest.mark.parametrize("data, says", [
    (b"", "cannot read"),  # EOFError before
    (b"\x93NUMPY", "cannot read"),
    (_npy_header((10**13, 64)) + b"\0" * 64, "at most"),  # MemoryError (4.5 PiB) before
    (_npy_header((4, 10**12)) + b"\0" * 64, "truncated"),
    (_npy_header((4, 64)) + b"\0" * 100, "truncated"),
    (_npy_header((4, 64), "|O"), "numeric"),
    (b"garbage that is no npy at all", "cannot read"),
])
def test_hostile_official_npy_is_a_keyframe_error(tmp_path, data, says):
    folder = _official(tmp_path, data)
    with pytest.raises(KeyframeError) as e:
        load_official_keyframes(folder)
    assert str(folder / "expression.npy") in str(e.value) and says in str(e.value)


@pytest.mark.parametrize("raw, says", [
    (b'{"format": "busto-keyframes\xff"}', "not UTF-8"),
    (json.dumps({**BASE, "keyframes": [{"frame": 10**30}]}).encode(), "frame must lie within"),  # OverflowError
    (json.dumps(BASE).replace("[0, 0, 0]", "[1" + "0" * 400 + ", 0, 0]", 1).encode(), "not numeric"),
    (json.dumps({**BASE, "fps": 10**400}).encode(), "fps"),  # OverflowError: int too large to convert to float
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),  # RecursionError
    (b'{"fps": ' + b"1" * 5000 + b"}", "not valid JSON"),  # ValueError: integer string conversion limit
    (json.dumps(BASE)[:-1].encode() + b', "fps": 1e999}', "fps"),
])
def test_hostile_keyframe_json_is_a_keyframe_error(tmp_path, raw, says):
    p = tmp_path / "k.json"
    p.write_bytes(raw)
    with pytest.raises(KeyframeError) as e:
        load_keyframes_json(p)
    assert str(p) in str(e.value) and says in str(e.value), str(e.value)


def test_interpolation_frame_count_is_limited_before_allocation():
    track = KeyframeTrack(pose=np.zeros((3, 6, 3)), expression=np.zeros((3, 64)))
    with pytest.raises(ValueError, match="at most"):
        interpolate_keyframes(track, MAX_INTERPOLATED_FRAMES)
    assert len(interpolate_keyframes(track, 2)) == 6


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["frame", "pose", "expression", "camera", "pitch", "yaw", "fps", "x"]), inner, max_size=4),
    max_leaves=20)
_keyframe = st.fixed_dictionaries({}, optional={
    "frame": st.integers() | st.floats(), "pose": _json | st.just([[0.0] * 3] * 6),
    "expression": _json | st.just([0.0] * 64), "camera": _json | st.just({"pitch": 1.0, "yaw": 1.0})})


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kfs=st.lists(_keyframe, max_size=3) | _json, fps=_json | st.floats(0.1, 100))
def test_random_keyframe_json_loads_or_raises_keyframe_error(tmp_path, kfs, fps):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({"format": "busto-keyframes", "format_version": 1, "fps": fps, "keyframes": kfs}))
    try:
        track = load_keyframes_json(p)
    except KeyframeError as e:
        assert str(p) in str(e)
        return
    assert np.isfinite(track.pose).all() and track.fps > 0
