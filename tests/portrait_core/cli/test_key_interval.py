"""`export` and `video` space evenly spaced keyframes alike: one default, one option name."""

from __future__ import annotations

from portrait_core.cli.export import _parser as export_parser
from portrait_core.cli.video import build_parser as video_parser
from portrait_core.export.pipeline import DEFAULT_KEY_INTERVAL


def test_key_interval_default_and_name_agree():
    e = export_parser().parse_args(["--out", "a.glb"])
    v = video_parser().parse_args(["--keyframes", "k.json", "--out", "o"])
    assert e.key_interval == v.n_interval == DEFAULT_KEY_INTERVAL
    assert video_parser().parse_args(["--keyframes", "k", "--out", "o", "--key-interval", "3"]).n_interval == 3
    assert video_parser().parse_args(["--keyframes", "k", "--out", "o", "--n-interval", "5"]).n_interval == 5
