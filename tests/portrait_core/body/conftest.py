"""Fixtures for the body tests: one synthetic model and its official-layout pickle per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_data():
    from portrait_core.body.synthetic import build_synthetic_smpl

    return build_synthetic_smpl()


@pytest.fixture(scope="session")
def body():
    from portrait_core.body.model import BodyModel

    return BodyModel.synthetic()


@pytest.fixture(scope="session")
def synthetic_pkl(tmp_path_factory, synthetic_data):
    from portrait_core.body.synthetic import write_synthetic_pkl

    return write_synthetic_pkl(tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl", synthetic_data)
