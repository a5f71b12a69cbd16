"""The worker protocol under malformed, hostile and oversized input (issue 19, item 3).

The real serve loop runs in-process over BytesIO streams (and in a real subprocess for the blocking cases): every
message gets an ``ok: false`` reply naming the problem, the loop keeps serving where the framing allows and exits
with status 2 where it cannot, and nothing of a declared size is read or allocated before it is checked.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portrait_core import serve
from portrait_core.geometry.camera import Camera

ROOT = Path(__file__).resolve().parents[2]
HYPO = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A Session with a random-init ``tiny`` generator loaded (shared: requests here never change it)."""
    from portrait_core.generator import Generator, generator_config, save_generator

    path = tmp_path_factory.mktemp("hostile") / "tiny.safetensors"
    torch.manual_seed(0)
    save_generator(path, Generator(generator_config("tiny")))
    s = serve.Session()
    s.handle("load", {"checkpoint": str(path), "device": "cpu"}, {})
    return s


def frame(header, arrays=None) -> bytes:
    return serve.encode_message(header, arrays)


def raw(header_bytes: bytes, payload: bytes = b"") -> bytes:
    return serve.MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + payload


def run_loop(data: bytes, session=None) -> tuple[int, list[dict]]:
    """Feed ``data`` to the real serve loop -> (exit status, the replies it wrote, progress messages dropped)."""
    out = io.BytesIO()
    code = serve.serve(io.BytesIO(data), out, session if session is not None else serve.Session())
    stream, replies = io.BytesIO(out.getvalue()), []
    while True:
        try:
            header, _ = serve.read_message(stream, max_payload=None)
        except EOFError:
            break
        if "progress" not in header:
            replies.append(header)
    return code, replies


def camera_arrays(n: int) -> dict[str, np.ndarray]:
    cam = Camera.portrait(torch.full((n,), math.pi / 2))
    return {"pose": np.zeros((n, 6, 3), np.float32), "expression": np.zeros((n, 64), np.float32),
            "cam2world": cam.cam2world.numpy(), "intrinsics": cam.intrinsics.numpy()}


HELLO = frame({"op": "hello"})


# ------------------------------------------------------------------------------------------------- framing
@pytest.mark.parametrize("bad, message", [
    (raw(b"{not json"), "not valid JSON"),
    (raw(b"\xff\xfe\x00op"), "not UTF-8"),
    (raw(b'["op", "hello"]'), "must be a JSON object"),
    (raw(b'{"op": "hello", "op2": ' + b"[" * 100000 + b"]" * 100000 + b"}"), "not valid JSON"),
    (raw(b'{"op": 12}'), "unknown operation 12"),
    (raw(b"{}"), "needs an 'op'"),
    (frame({"op": "hello", "extra": 1}), "unknown parameter(s) 'extra'"),
])
def test_an_unreadable_or_wrong_request_is_answered_and_the_worker_keeps_serving(bad, message):
    code, replies = run_loop(bad + HELLO + bad + HELLO)
    assert code == 0 and len(replies) == 4
    for r in replies[0::2]:
        assert r["ok"] is False and message in r["error"], r
    assert all(r["ok"] is True and r["protocol"] == serve.PROTOCOL_VERSION for r in replies[1::2])


@pytest.mark.parametrize("specs, message", [
    ([{"key": "pose", "dtype": "float32", "shape": [-1, 6, 3]}], "negative dimension"),
    ([{"key": "pose", "dtype": "float32", "shape": [1 << 40, 6, 3]}], "exceed the limit"),
    ([{"key": "pose", "dtype": "float32", "shape": [4000, 4000]}] * 2, "exceed the limit"),
    ([{"key": "pose", "dtype": "object", "shape": [1]}], "dtype 'object' not allowed"),
    ([{"key": "pose", "dtype": "float32", "shape": "big"}], "shape must be a list"),
    ([{"key": "pose", "dtype": "float32", "shape": [1.5]}], "shape must be a list"),
    ([{"key": "pose", "dtype": "float32", "shape": [1] * 9}], "at most 8"),
    ([{"key": f"a{i}", "dtype": "uint8", "shape": [0]} for i in range(17)], "at most 16"),
    ({"pose": 1}, "'arrays' must be a list"),
    (["pose"], "a spec must be"),
])
def test_array_specs_whose_payload_cannot_be_followed_end_the_session_cleanly(specs, message):
    t0 = time.perf_counter()
    code, replies = run_loop(raw(json.dumps({"op": "render", "arrays": specs}).encode()) + HELLO)
    assert code == serve.EXIT_PROTOCOL_ERROR and len(replies) == 1  # nothing after it is read
    assert replies[0]["ok"] is False and replies[0]["error_type"] == "FramingError" and message in replies[0]["error"]
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\n\r\n", "not a Busto message"),
    (serve.MAGIC + struct.pack("<I", 0xFFFFFFFF), "exceeds the limit"),
    (serve.MAGIC + struct.pack("<I", serve.MAX_HEADER_BYTES + 1) + b"{}", "exceeds the limit"),
    (serve.MAGIC + b"\x10", "ended inside a message prefix"),
    (serve.MAGIC + struct.pack("<I", 100) + b'{"op":', "ended inside a message header"),
    (frame({"op": "hello"}, {"preview_yaws": np.zeros(100)})[:-8], "ended inside a payload of array 'preview_yaws'"),
])
def test_streams_that_cannot_be_followed_are_answered_and_exit_2(data, message):
    code, replies = run_loop(HELLO + data)
    assert code == serve.EXIT_PROTOCOL_ERROR and replies[0]["ok"] is True
    assert len(replies) == 2 and replies[1]["ok"] is False and message in replies[1]["error"]


def test_a_huge_header_length_is_refused_at_once_by_a_real_worker():
    """0xFFFFFFFF used to block forever reading 4 GiB: now answered and exit 2 while stdin is still open."""
    proc = subprocess.Popen([sys.executable, "-m", "portrait_core", "serve"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        proc.stdin.write(HELLO + serve.MAGIC + struct.pack("<I", 0xFFFFFFFF) + b'{"op": "hel')  # and no more
        proc.stdin.flush()
        assert proc.wait(timeout=120) == serve.EXIT_PROTOCOL_ERROR
        stream = io.BytesIO(proc.stdout.read())
        assert serve.read_message(stream)[0]["ok"] is True
        reply = serve.read_message(stream)[0]
        assert reply["ok"] is False and "header length 4294967295 bytes exceeds the limit" in reply["error"]
        err = proc.stderr.read().decode()
        assert "cannot follow the input" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


def test_a_real_worker_survives_garbage_then_serves():
    """Malformed messages, then a real request, in a real subprocess: no traceback, the worker keeps serving."""
    proc = subprocess.run([sys.executable, "-m", "portrait_core", "serve"], cwd=ROOT, capture_output=True,
                          timeout=180, input=raw(b"{oops") + raw(b"\xc3\x28") + frame({"op": "sample", "avatar": "x"})
                          + frame({"op": "load", "device": "meta"}) + HELLO + frame({"op": "shutdown"}))
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr
    stream, replies = io.BytesIO(proc.stdout), []
    while True:
        try:
            replies.append(serve.read_message(stream)[0])
        except EOFError:
            break
    assert [r["ok"] for r in replies] == [False, False, False, False, True, True]
    assert "no model loaded" in replies[2]["error"] and "device must be one of cpu, cuda" in replies[3]["error"]


def test_a_closed_reply_pipe_ends_the_loop_quietly():
    class Closed(io.BytesIO):
        def write(self, b):
            raise BrokenPipeError(32, "Broken pipe")

    assert serve.serve(io.BytesIO(HELLO + HELLO), Closed(), serve.Session()) == 0


# ------------------------------------------------------------------------------------------------- request checks
@pytest.mark.parametrize("op, params, arrays, message", [
    ("load", {"device": "meta"}, {}, "device must be one of cpu, cuda"),
    ("load", {"device": ["cpu"]}, {}, "device must be one of"),
    ("load", {"checkpoint": 5}, {}, "checkpoint must be a path"),
    ("sample", {"avatar": "seed 7"}, {}, "avatar must be an object"),
    ("sample", {"avatar": {"seed": -1}}, {}, "avatar seed must be in [0, "),
    ("sample", {"avatar": {"seed": "7"}}, {}, "avatar seed must be an integer"),
    ("sample", {"avatar": {"seed": True}}, {}, "avatar seed must be an integer"),
    ("sample", {"avatar": {"truncation": float("nan")}}, {}, "truncation must be a finite number"),
    ("sample", {"avatar": {"body_shape": [0.0]}}, {}, "body_shape must have 10 values"),
    ("sample", {"avatar": {"body_shape": "tall"}}, {}, "body_shape must be a list"),
    ("sample", {"avatar": {"colour": 1}}, {}, "unknown avatar field(s) 'colour'"),
    ("sample", {"preview_size": 100000}, {}, "preview_size must be in [8, 8192]"),
    ("sample", {"preview_size": "big"}, {}, "preview_size must be an integer"),
    ("sample", {}, {"preview_yaws": np.zeros(2000)}, "1 to 256 preview_yaws"),
    ("sample", {}, {"preview_yaws": np.array([np.inf])}, "preview_yaws contains NaN or inf"),
    ("render", {"size": -64}, camera_arrays(1), "size must be in [8, 8192]"),
    ("render", {"size": 100000}, camera_arrays(1), "size must be in [8, 8192]"),
    ("render", {"size": 64.5}, camera_arrays(1), "size must be an integer"),
    ("render", {}, {**camera_arrays(2), "pose": np.zeros((3, 6, 3), np.float32)}, "same number of frames"),
    ("render", {}, {**camera_arrays(1), "intrinsics": np.zeros((1, 3, 3), np.float32)}, "positive focal lengths"),
    ("render", {}, {**camera_arrays(1), "expression": np.full((1, 64), np.nan, np.float32)}, "NaN or inf"),
    ("render", {}, {k: np.repeat(v, 2000, 0) for k, v in camera_arrays(1).items()}, "1 to 256 frames"),
    ("render", {}, {k: v[:0] for k, v in camera_arrays(1).items()}, "1 to 256 frames"),
    ("render", {}, {**camera_arrays(1), "extra": np.zeros(1)}, "unexpected array(s) 'extra'"),
    ("render", {}, {"pose": np.zeros((1, 6, 3))}, "missing array 'expression'"),
    ("extract", {"resolution": 100000}, {}, "resolution must be in [16, 512]"),
    ("extract", {"resolution": -5}, {}, "resolution must be in [16, 512]"),
    ("extract", {"morphs": 1000}, {}, "morphs must be in [0, 64]"),
    ("extract", {"level": "high"}, {}, "level must be a number"),
    ("extract", {"colors": "yes"}, {}, "colors must be true or false"),
    ("frobnicate", {}, {}, "unknown operation 'frobnicate'"),
])
def test_each_malformed_request_is_refused_with_its_reason(session, op, params, arrays, message):
    assert message in _refusal(op, params, arrays)
    with pytest.raises(serve.ServeError) as e:  # the same through the Session the in-process backend uses
        session.handle(op, params, arrays)
    assert message in str(e.value)


def _refusal(op, params, arrays) -> str:
    with pytest.raises(serve.ServeError) as e:
        serve.validate_request(op, params, arrays)
    return str(e.value)


def test_valid_requests_get_their_defaults():
    assert serve.validate_request("load", {"device": "cuda:1"}, {}) == {"checkpoint": None, "device": "cuda:1"}
    out = serve.validate_request("extract", {"avatar": {"seed": 3}, "level": "auto", "decimate": None}, {})
    assert out == {"avatar": {"seed": 3, "truncation": 0.7, "body_shape": [0.0] * 10, "super_resolve": True},
                   "resolution": 128, "decimate": 0, "colors": True, "level": "auto", "morphs": 0, "texture": 0}
    assert serve.validate_request("render", {"size": 0}, camera_arrays(3))["size"] is None


def test_requests_over_the_memory_budget_are_refused_before_allocating(session):
    big = {k: np.repeat(v, 256, 0) for k, v in camera_arrays(1).items()}
    with pytest.raises(serve.ServeError, match=r"render: this request needs about [\d.]+ GiB .* over the worker's "
                                               r"budget"):
        session.handle("render", {"size": 8192}, big)
    with mock.patch.dict(os.environ, {serve.MEMORY_BUDGET_ENV: "0.25"}):
        assert serve.memory_budget() == 1 << 28
        with pytest.raises(serve.ServeError, match="extract: this request needs about 2.0 GiB"):
            session.handle("extract", {"resolution": 512}, {})
        with pytest.raises(serve.ServeError, match="sample: this request needs"):
            session.handle("sample", {"preview_size": 2048}, {"preview_yaws": np.zeros(8)})
    # the estimate follows the request: 4x the frames, 4x the bytes; 2x the extract resolution, 8x
    model = {"output_resolution": 64, "sr_scale": 2, "samples_per_ray": 24}
    av = serve.validate_avatar("t", {})
    one = serve.estimate_request_bytes("render", {"avatar": av, "size": 128}, camera_arrays(1), model)
    four = serve.estimate_request_bytes("render", {"avatar": av, "size": 128}, camera_arrays(4), model)
    assert four == 4 * one > 0
    e = serve.estimate_request_bytes
    assert e("extract", {"resolution": 256}, {}, model) == 8 * e("extract", {"resolution": 128}, {}, model)
    default = serve.memory_budget({})
    assert 0 < default and serve.memory_budget({serve.MEMORY_BUDGET_ENV: "lots"}) == default


# ------------------------------------------------------------------------------------------------- properties
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_arrays = st.dictionaries(
    st.sampled_from(["pose", "expression", "cam2world", "intrinsics", "preview_yaws", "x"]),
    st.builds(lambda shape, v: np.full(shape, v, np.float32),
              st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
              st.floats(-1e3, 1e3, width=32) | st.just(float("nan"))),
    max_size=4)


def _replies_are_well_formed(code, replies, n_requests=None):
    assert code in (0, serve.EXIT_PROTOCOL_ERROR)
    for r in replies:
        assert isinstance(r.get("ok"), bool)
        if not r["ok"]:
            assert isinstance(r["error"], str) and r["error"] and r["error_type"]
    if n_requests is not None:
        assert len(replies) == n_requests


@HYPO
@given(st.binary(max_size=200))
def test_random_bytes_give_replies_or_a_clean_exit(data):
    _replies_are_well_formed(*run_loop(data))


@HYPO
@given(st.binary(max_size=80), st.binary(max_size=40), st.integers(0, 0xFFFFFFFF) | st.none())
def test_random_headers_give_replies_or_a_clean_exit(head, tail, length):
    n = len(head) if length is None else length
    code, replies = run_loop(serve.MAGIC + struct.pack("<I", n) + head + tail + HELLO)
    _replies_are_well_formed(code, replies)
    assert replies, "every message start gets a reply"


@HYPO
@given(st.lists(st.tuples(st.sampled_from(sorted(set(serve.OPS) - {"load", "shutdown"}) + ["x", ""]),
                          st.dictionaries(st.sampled_from(["avatar", "size", "preview_size", "resolution", "decimate",
                                                           "colors", "level", "morphs", "checkpoint", "device", "zz"]),
                                          _json, max_size=4), _arrays), min_size=1, max_size=4))
def test_random_requests_each_get_one_reply_and_the_worker_keeps_serving(session, requests):
    """Well-framed requests with random values, against a loaded model: one reply each, then ``hello`` still works.
    A tiny memory budget keeps valid heavy requests from running (they are refused by the budget check instead)."""
    data = b"".join(frame({"op": op, **params}, arrays) for op, params, arrays in requests) + HELLO
    with mock.patch.dict(os.environ, {serve.MEMORY_BUDGET_ENV: "0.000001"}):
        code, replies = run_loop(data, session)
    _replies_are_well_formed(code, replies, len(requests) + 1)
    assert code == 0 and replies[-1]["ok"] is True
    for (op, _, _), r in zip(requests, replies):
        assert not r["ok"] or op in ("hello", "release")  # anything heavier is refused


@HYPO
@given(st.sampled_from(list(serve.OPS) + ["x"]), st.dictionaries(st.text(max_size=12), _json, max_size=6), _arrays)
def test_validate_request_accepts_or_names_the_problem(op, params, arrays):
    try:
        out = serve.validate_request(op, params, arrays)
    except serve.ServeError as exc:
        assert str(exc)
    else:
        assert isinstance(out, dict)
