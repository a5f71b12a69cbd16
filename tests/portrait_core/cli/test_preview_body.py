"""``python -m portrait_core preview-body`` writes the expected PNGs (small size, to stay quick on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("smplx")


def test_preview_body_writes_pngs(tmp_path, capsys):
    from portrait_core.__main__ import main
    from portrait_core.cli.preview_body import PREVIEWS

    stems = ["canonical", "pose_nod", "expr_jaw_open"]
    assert set(stems) <= {p[0] for p in PREVIEWS}
    assert main(["preview-body", "--out", str(tmp_path), "--size", "64", "--only", *stems]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == sorted(f"{s}.png" for s in stems)
    for s in stems:
        img = np.asarray(Image.open(tmp_path / f"{s}.png"))
        assert img.ndim == 3 and img.shape[2] == 3
        assert img.shape[1] == 5 * 66 - 2 and img.shape[0] == 64 + 18
        # the portrait panel is not blank: body pixels differ from the white background
        panel = img[18:, :64]
        assert (panel.min(axis=2) < 200).mean() > 0.2
    assert "canonical.png" in capsys.readouterr().out


def test_preview_body_all_names_and_bad_args(tmp_path):
    from portrait_core.cli.preview_body import PREVIEWS, main

    names = [p[0] for p in PREVIEWS]
    assert names == ["canonical", "pose_head_turn", "pose_nod", "pose_shrug", "expr_jaw_open", "expr_smile",
                     "expr_blink"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--only", "nonsense"])
    with pytest.raises(SystemExit):
        main([])


def test_rasteriser_depth_and_coverage():
    import torch

    from portrait_core.cli.preview_body import Mesh, render
    from portrait_core.geometry.camera import Camera

    cam = Camera.orbit(np.pi / 2, np.pi / 2, 2.0, torch.zeros(3), 20.0)
    # two axis-aligned squares facing the camera: the nearer one (z = 0.1) must win where they overlap
    def square(z, half):
        v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
        return v, np.array([[0, 1, 2], [0, 2, 3]])

    v1, f1 = square(0.1, 0.1)
    v2, f2 = square(-0.1, 0.3)
    rgb, depth = render(cam, [Mesh(v2, f2, np.array([0.0, 0.0, 1.0])), Mesh(v1, f1, np.array([1.0, 0.0, 0.0]))], 64)
    assert np.isinf(depth[0, 0]) and (rgb[0, 0] == 1.0).all()  # background in the corner
    c = depth[32, 32]
    assert abs(c - 1.9) < 1e-6  # the near square, camera z = 2 - 0.1
    assert rgb[32, 32, 0] > 0.3 and rgb[32, 32, 2] == 0.0
    # coverage: no holes inside the near square's footprint
    px, _ = cam.project(torch.tensor([[[-0.1, 0.1, 0.1], [0.1, -0.1, 0.1]]]), 64, 64)
    (x0, y0), (x1, y1) = np.ceil(px[0, 0].numpy()).astype(int), np.floor(px[0, 1].numpy()).astype(int)
    inner = depth[y0 + 1:y1, x0 + 1:x1]
    assert inner.size > 100 and np.allclose(inner, 1.9)


def test_cameras_frame_the_synthetic_body_and_face():
    """Portrait camera: the whole head and both shoulder joints in frame; face camera: the posed face centre at the
    image centre and all 68 landmarks in frame, also under a head turn and a nod."""
    import torch

    from portrait_core import conventions as C
    from portrait_core.cli.preview_body import _load_models
    from portrait_core.geometry.camera import Camera
    from portrait_core.geometry.rotations import transform_points

    body, face = _load_models(None, None)
    betas = torch.zeros(1, C.BODY_SHAPE_DIM)
    size = 256
    for head in ((0.0, 0.0, 0.0), (0.0, 0.6, 0.0), (0.4, 0.0, 0.0)):
        pose = torch.zeros(1, 6, 3)
        pose[0, 3] = torch.tensor(head)
        with torch.no_grad():
            state = body.posed(betas, pose)
            portrait = Camera.portrait()
            px, depth = portrait.project(state.vertices[:, body.head_mask], size, size)
            assert (px >= 0).all() and (px <= size - 1).all(), "head leaves the portrait frame"
            assert ((depth > portrait.near[:, None]) & (depth < portrait.far[:, None])).all()
            sp, _ = portrait.project(state.joints[:, [C.LEFT_SHOULDER, C.RIGHT_SHOULDER]], size, size)
            assert (sp[..., 0] > 0).all() and (sp[..., 0] < size - 1).all() and (sp[..., 1] < size - 1).all()
            G = state.bone_transforms[:, C.HEAD]
            cam = Camera.face(G, body.face_centre(betas))
            centre, _ = cam.project(body.face_centre(betas, pose)[:, None], size, size)
            torch.testing.assert_close(centre[0, 0], torch.tensor([127.5, 127.5]), atol=1e-3, rtol=0)
            T = body.face_transform(betas, pose)
            lm = transform_points(T[:, None], face.landmarks(torch.zeros(1, 80), torch.zeros(1, 64)))
            lp, ld = cam.project(lm, size, size)
            assert (lp >= 0).all() and (lp <= size - 1).all()
            assert ((ld > cam.near[:, None]) & (ld < cam.far[:, None])).all()
