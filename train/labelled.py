"""Labelled synthetic data for supervised objectives: every image with everything that made it (SynthPortrait),
held in memory with a held-out split of identities, its batch stream, and the held-out evaluation (the model card's
protocol: each held-out record rendered with its own labels and compared with its image and face crop).

The noise latent of a supervised generator is the record's appearance code (:mod:`portrait_core.assets.appearance`:
skin, hair colour, one-hot hair style / clothing pattern / neckline from ``extra``, plus the clothing colour and
contrast measured in the renders of the same identity), zero-padded to the generator's noise size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from portrait_core.assets.appearance import appearance_code, clothing_colour_stats
from portrait_core.data.samplers import LabelSampler
from portrait_core.face import EXPRESSION_NAMES
from portrait_core.generator import Controls, Generator, Latents
from train.cameras import downsample, face_camera, portrait_camera
from train.data import GlobalOrder


class LabelledData:
    """All images, masks, face crops, labels and appearance codes of one or more Busto-format datasets, held in
    memory (several roots are concatenated in order; identities never span roots).

    ``holdout``: how many identities (by ``extra.identity_index``, else per record) to keep out of training, the
    last ones of the last root. Records without ``extra`` get the neutral description (grey clothing) and a
    warning."""

    def __init__(self, root: str | os.PathLike | list, holdout: int = 0, limit: int | None = None):
        from portrait_core.data.readers import open_source

        roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
        if not roots:
            raise ValueError("LabelledData: no dataset root given")
        self.roots = roots
        self.root = roots[0]
        recs, rec_source = [], []
        for r in roots:
            # every form the readers accept (folder, packed zip, converted data); paths are contained in the
            # dataset and declared sizes checked before anything is decoded (portrait_core.data.safety)
            source = open_source(r)
            found = list(source.records)
            if not found:
                raise ValueError(f"{source.label_file}: no image records")
            if r == roots[0]:
                self.info = dict(source.info)
            recs += found
            rec_source += [source] * len(found)
        if limit:
            recs, rec_source = recs[:limit], rec_source[:limit]
        imgs, masks, faces = [], [], []
        for r, src in zip(recs, rec_source):
            img = src.read_png(r["image"], "RGB")
            mask = src.read_png(r["mask"], "L") if r.get("mask") else np.full(img.shape[:2], 255, np.uint8)
            if not r.get("face"):
                raise ValueError(f"{src.label_file}: record {r.get('name')} has no face crop (supervised training "
                                 f"needs the face-camera renders)")
            face = src.read_png(r["face"], "RGB")
            imgs.append(img)
            masks.append(mask)
            faces.append(face)
        for src in dict.fromkeys(rec_source):
            src.close()
        rec_root = [src.root for src in rec_source]
        if len({i.shape for i in imgs}) != 1 or len({f.shape for f in faces}) != 1:
            raise ValueError(f"{', '.join(map(str, roots))}: images (and face crops) must all have one size")
        self.image = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]
        self.mask = torch.from_numpy(np.stack(masks))[:, None].contiguous()  # uint8 [N, 1, H, W]
        self.face = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
        f32 = lambda k: torch.tensor(np.asarray([r[k] for r in recs], dtype=np.float32))  # noqa: E731
        self.camera, self.face_camera = f32("camera"), f32("face_camera")
        self.pose, self.expression = f32("pose"), f32("expression")
        self.identity, self.body_shape = f32("identity"), f32("body_shape")
        # identities: records of one root sharing extra.identity_index (views of one avatar)
        keys = []
        for i, (r, rt) in enumerate(zip(recs, rec_root)):
            extra = r.get("extra") or {}
            keys.append((str(rt), extra.get("identity_index", f"record{i}")))
        order = list(dict.fromkeys(keys))
        position = {k: n for n, k in enumerate(order)}
        self.identity_of = torch.tensor([position[k] for k in keys])
        self.num_identities = len(order)
        self.appearance = self._codes(recs, imgs, masks)
        held = set(range(max(0, self.num_identities - holdout), self.num_identities)) if holdout else set()
        is_held = torch.tensor([int(k) in held for k in self.identity_of.tolist()])
        self.train_index = torch.nonzero(~is_held)[:, 0]
        self.heldout_index = torch.nonzero(is_held)[:, 0]
        if self.train_index.numel() == 0:
            raise ValueError(f"holdout={holdout} leaves no training images ({self.num_identities} identities)")
        self.names = [r.get("name", str(i)) for i, r in enumerate(recs)]

    def _codes(self, recs, imgs, masks) -> Tensor:
        """[N, 80] appearance codes; clothing colour statistics averaged over each identity's views."""
        stats = [clothing_colour_stats(im, m) for im, m in zip(imgs, masks)]
        n_id = self.num_identities
        mean = np.zeros((n_id, 3))
        spread = np.zeros((n_id, 3))
        count = np.zeros(n_id)
        for k, (mu, sd) in zip(self.identity_of.tolist(), stats):
            mean[k] += mu
            spread[k] += sd
            count[k] += 1
        mean /= count[:, None]
        spread /= count[:, None]
        codes, missing = [], 0
        for i, r in enumerate(recs):
            extra = r.get("extra")
            if not extra or "skin" not in extra:
                missing += 1
                extra = {"skin": [0.7, 0.55, 0.45], "hair_colour": [0.1, 0.08, 0.08], "hair_style": "short",
                         "clothing": "solid", "neckline": "crew"}
            k = int(self.identity_of[i])
            codes.append(appearance_code(extra, mean[k], spread[k]))
        if missing:
            import warnings

            warnings.warn(f"{self.root}: {missing} record(s) have no appearance description in 'extra'; they use "
                          f"a neutral one (only the measured clothing colour differs)", stacklevel=3)
        return torch.from_numpy(np.stack(codes))

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def resolution(self) -> int:
        return self.image.shape[-1]

    def control_range(self, components: int = len(EXPRESSION_NAMES)) -> tuple[Tensor, Tensor]:
        """(low, high) [components]: the range the training labels reach in the leading expression components
        (the named controls of the synthetic 3DMM), for :func:`sweep_expressions`."""
        labels = self.expression[self.train_index, :components]
        return labels.amin(0), labels.amax(0)

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Float tensors for records ``idx``: image/face in [-1, 1], mask in [0, 1], labels, appearance."""
        return {"image": self.image[idx].float() / 127.5 - 1, "mask": self.mask[idx].float() / 255,
                "face": self.face[idx].float() / 127.5 - 1, "camera": self.camera[idx],
                "face_camera": self.face_camera[idx], "pose": self.pose[idx], "expression": self.expression[idx],
                "identity": self.identity[idx], "body_shape": self.body_shape[idx],
                "appearance": self.appearance[idx]}

    def samplers(self, index: Tensor | None = None) -> LabelSampler:
        """Label-sampler tables of records ``index`` (default: the training split): one (identity, body shape,
        appearance) row per identity, one (camera, pose, expression) row per image."""
        index = self.train_index if index is None else index
        first = {}
        for i in index.tolist():
            first.setdefault(int(self.identity_of[i]), i)
        rows = torch.tensor(sorted(first.values()))
        return LabelSampler(identity=self.identity[rows], body_shape=self.body_shape[rows],
                            appearance=self.appearance[rows], camera=self.camera[index], pose=self.pose[index],
                            expression=self.expression[index], source=str(self.root))

    def label_table(self, index: Tensor | None = None) -> LabelSampler:
        """The labels of records ``index`` (default: the training split), one row per image, as the adversarial
        objective's label sampler, with the records' appearance codes as the noise table."""
        index = self.train_index if index is None else index
        return LabelSampler(camera=self.camera[index], face_camera=self.face_camera[index], pose=self.pose[index],
                            expression=self.expression[index], identity=self.identity[index],
                            body_shape=self.body_shape[index], appearance=self.appearance[index])


class LabelledStream:
    """Batches of the training split in the order of a :class:`~train.data.GlobalOrder` over it (resumable
    exactly: the order's state is saved with the training state). Each batch also carries ``index`` (the
    records' positions in the data, e.g. for caches)."""

    def __init__(self, data: LabelledData, order: GlobalOrder, batch: int):
        self.data, self.order, self.batch = data, order, batch

    def next(self) -> dict[str, Tensor]:
        idx = self.data.train_index[self.order.next_global(self.batch)]
        return {**self.data.batch(idx), "index": idx}


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_heldout(G: Generator, data: LabelledData, index: Tensor, resolution: int = 64,
                     batch: int = 4, super_resolve: bool = False) -> dict[str, float]:
    """Render the records ``index`` with their own labels and compare with the area-downsampled renders:
    image L1 and PSNR (on [0, 1] colours), alpha L1 and IoU (alpha > 0.5), face-crop L1 and PSNR. With
    ``super_resolve`` also ``psnr_bicubic`` / ``face_psnr_bicubic``: the ray-resolution render upsampled bicubically
    to the same size instead (what super-resolution must beat)."""
    from train.fidelity import bicubic_upsample

    sums = {"l1": 0.0, "mse": 0.0, "alpha_l1": 0.0, "iou": 0.0, "face_l1": 0.0, "face_mse": 0.0}
    psnrs, face_psnrs, bicubic, face_bicubic = [], [], [], []

    def psnr(pred: Tensor, target: Tensor) -> list[float]:
        mse = ((pred - target) / 2).square().flatten(1).mean(1)
        return (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()

    n = 0
    was_training = G.training
    G.eval()
    for start in range(0, index.numel(), batch):
        idx = index[start:start + batch]
        bt = data.batch(idx)
        lat = Latents(bt["identity"], bt["appearance"])
        ctl = Controls(bt["pose"], bt["expression"], bt["body_shape"])
        out = G(lat, ctl, portrait_camera(bt["camera"]), resolution=resolution, super_resolve=super_resolve)
        size = out.image.shape[-1]
        tgt, msk = downsample(bt["image"], size), downsample(bt["mask"], size)
        pred01, tgt01 = (out.image + 1) / 2, (tgt + 1) / 2
        err = (pred01 - tgt01)
        mse = err.square().flatten(1).mean(1)
        sums["l1"] += float(err.abs().flatten(1).mean(1).sum())
        sums["mse"] += float(mse.sum())
        psnrs += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
        if super_resolve:
            bicubic += psnr(bicubic_upsample(out.image_lr, size), tgt)
        sums["alpha_l1"] += float((out.alpha - msk).abs().flatten(1).mean(1).sum())
        a, m = out.alpha > 0.5, msk > 0.5
        sums["iou"] += float(((a & m).flatten(1).sum(1) / (a | m).flatten(1).sum(1).clamp_min(1)).sum())
        fres = min(resolution, data.face.shape[-1])
        sr = G.cfg.superres.scale if super_resolve else 1
        fo = G(lat, ctl, face_camera(bt["face_camera"]), resolution=max(1, fres // sr), super_resolve=super_resolve)
        ferr = (fo.image + 1) / 2 - (downsample(bt["face"], fo.image.shape[-1]) + 1) / 2
        fmse = ferr.square().flatten(1).mean(1)
        sums["face_l1"] += float(ferr.abs().flatten(1).mean(1).sum())
        sums["face_mse"] += float(fmse.sum())
        face_psnrs += (-10 * torch.log10(fmse.clamp_min(1e-10))).tolist()
        if super_resolve:
            face_bicubic += psnr(bicubic_upsample(fo.image_lr, fo.image.shape[-1]),
                                 downsample(bt["face"], fo.image.shape[-1]))
        n += idx.numel()
    G.train(was_training)
    res = {k: v / max(n, 1) for k, v in sums.items()}
    res["psnr"] = float(np.mean(psnrs)) if psnrs else float("nan")
    res["face_psnr"] = float(np.mean(face_psnrs)) if face_psnrs else float("nan")
    if super_resolve and n:
        res["psnr_bicubic"], res["face_psnr_bicubic"] = float(np.mean(bicubic)), float(np.mean(face_bicubic))
    res["images"] = n
    res["resolution"] = int(out.image.shape[-1]) if n else resolution
    return res


@torch.no_grad()
def baseline_metrics(G: Generator, data: LabelledData, index: Tensor, resolution: int = 64) -> dict:
    """Reference scores for :func:`evaluate_heldout` on the same images: PSNR / L1 of an all-white image and of
    the mean training image, and the full metrics of an untrained generator with ``G``'s config (seed 0)."""
    tgt = (downsample(data.batch(index)["image"], resolution) + 1) / 2
    mean_img = torch.zeros(1, 3, resolution, resolution)
    for start in range(0, data.train_index.numel(), 64):
        idx = data.train_index[start:start + 64]
        mean_img += ((downsample(data.batch(idx)["image"], resolution) + 1) / 2).sum(0, keepdim=True)
    mean_img /= data.train_index.numel()

    def score(pred: Tensor) -> dict[str, float]:
        err = pred - tgt
        mse = err.square().flatten(1).mean(1)
        return {"l1": float(err.abs().mean()), "psnr": float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())}

    torch.manual_seed(0)
    untrained = Generator(G.cfg)
    return {"white": score(torch.ones_like(tgt)), "mean_training_image": score(mean_img.expand_as(tgt)),
            "untrained_generator": evaluate_heldout(untrained, data, index, resolution)}


@torch.no_grad()
def sample_grid(G: Generator, data: LabelledData, index: Tensor, path: Path, resolution: int = 64) -> Path:
    """PNG with one row per record: target | render | render alpha | face target | face render."""
    from PIL import Image

    was_training = G.training
    G.eval()
    bt = data.batch(index)
    lat = Latents(bt["identity"], bt["appearance"])
    ctl = Controls(bt["pose"], bt["expression"], bt["body_shape"])
    out = G(lat, ctl, portrait_camera(bt["camera"]), resolution=resolution)
    fo = G(lat, ctl, face_camera(bt["face_camera"]), resolution=resolution)
    G.train(was_training)
    to01 = lambda x: ((x.clamp(-1, 1) + 1) / 2)  # noqa: E731
    cols = [to01(downsample(bt["image"], resolution)), to01(out.image_lr), out.alpha_lr.expand(-1, 3, -1, -1),
            to01(downsample(bt["face"], resolution)), to01(fo.image_lr)]
    grid = torch.cat([torch.cat(list(c), dim=1) for c in cols], dim=2)  # [3, B*H, 5*W]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@torch.no_grad()
def set_style_averages(G: Generator, identity: Tensor, appearance: Tensor) -> None:
    """Truncation averages = mean mapped styles over the training (identity, appearance) pairs (the appearance code
    replaces the standard-normal noise that ``Generator.update_w_avg`` assumes)."""
    z = torch.cat([identity, appearance], -1).to(G.device, G.radiance_style_avg.dtype)
    G.radiance_style_avg.copy_(G.radiance_mapping(z).mean(0))
    if G.superres_mapping is not None:
        G.superres_style_avg.copy_(G.superres_mapping(z).mean(0))


