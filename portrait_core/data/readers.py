"""Dataset readers: Busto's format (folder or packed zip), SHHQ-HS-style folders, 360°PHQ ``dataset.json``;
converters to Busto's format. See docs/data-format.md for the exact layouts accepted.

Every reader is a :class:`Source`: dataset ``info``, a list of Busto label ``records`` (plain JSON data, see
``labels.py``), ``problems`` found while reading (each naming file and field), and file access by the relative
paths the records use. ``open_source(path)`` detects the format.
"""

from __future__ import annotations

import abc
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .labels import (
    FILE_FIELDS,
    LABELS_FILE,
    LabelError,
    Problem,
    check_camera25,
    load_labels_json,
    make_info,
    make_record,
    validate_document,
    validate_record,
    write_labels,
)
from .safety import (
    LimitError,
    PathError,
    Root,
    check_image_size,
    check_resolution,
    decode_text,
    load_npy,
    load_npz,
    name_problem,
    path_problem,
    read_regular_file,
    read_zip_member,
)


class Source(abc.ABC):
    """Records plus file access. Subclasses implement ``_read`` and ``has_file``."""

    kind = "source"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.info: dict = {}
        self.records: list[dict] = []
        self.problems: list[Problem] = []
        self.label_file = str(self.root)

    @abc.abstractmethod
    def has_file(self, rel: str) -> bool:
        """Whether the dataset holds the file ``rel`` (a path relative to its root)."""

    @abc.abstractmethod
    def _read(self, rel: str) -> bytes:
        """The bytes of the file ``rel``."""

    def describe(self, rel: str) -> str:
        """A path for messages: where the file ``rel`` lives."""
        return str(self.root / rel)

    def check_path(self, rel: object, what: str) -> None:
        """PathError '<what>: <problem>' when ``rel`` may not be read from this dataset (archives: malformed
        names; folders override this to also resolve symlinks under the root)."""
        why = path_problem(rel)
        if why:
            raise PathError(f"{what}: {why}")

    def _drop_unsafe(self, where: list[str]) -> None:
        """Check every file path of every record (``where[k]``: record k's JSON path for messages); records with
        a path that is malformed or leaves the dataset move to ``problems``."""
        keep = []
        for rec, at in zip(self.records, where):
            paths = [(f"{at}.{k}", rec.get(k)) for k in FILE_FIELDS if rec.get(k) is not None]
            mesh = rec.get("mesh")
            paths += [(f"{at}.mesh.{k}", v) for k, v in (mesh.items() if isinstance(mesh, dict) else ())]
            bad = []
            for field, rel in paths:
                what = f"{self.label_file}: {field}"
                try:
                    self.check_path(rel, what)
                except PathError as e:
                    bad.append(Problem(self.label_file, field, e.problems[0][len(what) + 2:]))
            if bad:
                self.problems += bad
            else:
                keep.append(rec)
        self.records = keep

    def _first_resolution(self) -> int | None:
        """Width of the first record's image whose header can be read (problems for those that cannot)."""
        for i, rec in enumerate(self.records):
            try:
                return check_resolution(self.image_size(rec["image"])[0], self.describe(rec["image"]))
            except FileNotFoundError:
                continue  # reported by validate's file check
            except (OSError, LabelError) as e:
                msg = "; ".join(e.problems) if isinstance(e, LabelError) else str(e)
                self.problems.append(Problem(self.label_file, f"images[{i}].image", msg))
        return None

    def read_bytes(self, rel: str) -> bytes:
        self.check_path(rel, self.describe(str(rel)))
        try:
            return self._read(rel)
        except (FileNotFoundError, KeyError):
            raise FileNotFoundError(f"{self.describe(rel)}: file not found") from None

    def _open_image(self, data: bytes, rel: str):
        """PIL image of ``data`` with its declared size checked (LimitError) before anything is decoded."""
        from PIL import Image, UnidentifiedImageError

        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # far above MAX_IMAGE_PIXELS: PIL refuses it while opening
            raise LimitError(f"{self.describe(rel)}: (image): {e}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise OSError(f"{self.describe(rel)}: cannot decode image: {e}") from None
        try:
            check_image_size(im.size, self.describe(rel))
        except LimitError:
            im.close()
            raise
        return im

    def image_size(self, rel: str) -> tuple[int, int]:
        """(width, height) from the image header (nothing decoded)."""
        with self._open_image(self.read_bytes(rel), rel) as im:
            return im.size

    def read_png(self, rel: str, mode: str | None = None) -> np.ndarray:
        """Decode an image file (PNG/WebP/JPEG) -> uint8 [H, W] or [H, W, C]; errors name the file.

        OSError for a missing or undecodable file; LimitError (a LabelError) for an image whose header declares
        more than ``safety.MAX_IMAGE_PIXELS``; PathError for a path outside the dataset."""
        from PIL import UnidentifiedImageError

        data = self.read_bytes(rel)
        try:
            with self._open_image(data, rel) as im:
                im.load()
                if mode is not None:
                    im = im.convert(mode)
                return np.asarray(im).copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if isinstance(e, LabelError):
                raise
            raise OSError(f"{self.describe(rel)}: cannot decode image: {e}") from None

    def verify_image(self, rel: str) -> str | None:
        """Cheap integrity check (header + data CRCs for PNG); returns the reason it is broken, or None."""
        try:
            data = self.read_bytes(rel)
            with self._open_image(data, rel) as im:
                im.verify()
            with self._open_image(data, rel) as im:  # verify() does not decode; a truncated body fails here
                im.load()
        except FileNotFoundError:
            return "file not found"
        except LabelError as e:
            prefix = f"{self.describe(rel)}: "
            return "; ".join(m[len(prefix):] if m.startswith(prefix) else m for m in e.problems)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            return f"cannot decode image ({type(e).__name__}: {e})"
        return None

    def close(self) -> None:  # noqa: B027 - optional hook: sources holding an open archive override it
        pass


def _validated(source: Source, doc: Any, strict: bool) -> None:
    """Fill ``source.info/records/problems`` from a parsed Busto document; drop records with problems."""
    problems = validate_document(doc, file=source.label_file)
    source.problems = problems
    if not isinstance(doc, dict):
        if strict:
            raise LabelError([str(p) for p in problems])
        return
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    bad_info = {p.field[5:] for p in problems if p.field.startswith("info.")}
    source.info = {k: v for k, v in info.items() if k not in bad_info}  # never hand on a bad declared size
    images = doc.get("images") if isinstance(doc.get("images"), list) else []
    bad = {p.field.split(".")[0] for p in problems if p.field.startswith("images[")}
    kept = [i for i in range(len(images)) if f"images[{i}]" not in bad]
    source.records = [images[i] for i in kept]
    source.dropped = [i for i in range(len(images)) if f"images[{i}]" in bad]
    source._drop_unsafe([f"images[{i}]" for i in kept])
    if strict and source.problems:
        raise LabelError([str(p) for p in source.problems])


class BustoFolder(Source):
    """Busto's dataset folder: labels.json + images/ masks/ faces/ meshes/."""

    kind = "busto"

    def __init__(self, root: str | os.PathLike, strict: bool = True):
        super().__init__(root)
        self._base = Root(self.root)
        self.label_file = str(self.root / LABELS_FILE)
        _validated(self, load_labels_json(self.label_file), strict)

    def check_path(self, rel: object, what: str) -> None:
        self._base.locate(rel, what)

    def has_file(self, rel: str) -> bool:
        try:
            return self._base.locate(rel, rel).is_file()
        except PathError:
            return False

    def _read(self, rel: str) -> bytes:
        return read_regular_file(self._base.locate(rel, self.describe(rel)), self.describe(rel))


class BustoZip(Source):
    """A packed Busto dataset: one zip holding labels.json and the files it names (see pack.py).

    The zip handle is reopened per process (safe with DataLoader workers).
    """

    kind = "busto-zip"

    def __init__(self, path: str | os.PathLike, strict: bool = True):
        super().__init__(path)
        self._zip: zipfile.ZipFile | None = None
        self._pid = None
        self.label_file = f"{self.root}:{LABELS_FILE}"
        zf = self._handle()
        try:
            data = read_zip_member(zf, LABELS_FILE, self.label_file)
        except KeyError:
            raise LabelError(f"{self.root}: {LABELS_FILE}: not in the archive") from None
        self.names = set(zf.namelist())
        _validated(self, load_labels_json(self.label_file, text=data), strict)

    def _handle(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.root)
            except (zipfile.BadZipFile, FileNotFoundError) as e:
                raise LabelError(f"{self.root}: (archive): cannot open: {e}") from None
            self._pid = os.getpid()
        return self._zip

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_zip"] = None
        return d

    def describe(self, rel: str) -> str:
        return f"{self.root}:{rel}"

    def has_file(self, rel: str) -> bool:
        return rel in self.names

    def _read(self, rel: str) -> bytes:
        return read_zip_member(self._handle(), rel, self.describe(rel))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


# --- SHHQ-HS-style data --------------------------------------------------------------------------------------------

SHHQ_TABLES = {  # file -> (key, shape of one row)
    "camera_pose.npy": ("camera_pose", (2,)),
    "joint_eulers.npy": ("joint_eulers", (6, 3)),
    "betas.npy": ("betas", (10,)),
    "id.npy": ("id", (80,)),
    "expression.npy": ("expression", (64,)),
}
SHHQ_SAMPLER_TABLES = ("camera_pose_joint_sample.npy", "id_shape_sampler_body.npy", "expression_body.npy")


def _euler_zyx_to_axis_angle(e: np.ndarray) -> np.ndarray:
    """[..., 3] ZYX Euler (R = Rz(e0) Ry(e1) Rx(e2)) -> axis-angle [..., 3] (radians)."""
    import torch

    from portrait_core.geometry.rotations import euler_zyx_to_matrix, matrix_to_axis_angle

    return matrix_to_axis_angle(euler_zyx_to_matrix(torch.as_tensor(e, dtype=torch.float64))).numpy()


def _derived_cameras(pitch_yaw: np.ndarray, pose_aa: np.ndarray, betas: np.ndarray, body=None):
    """Busto portrait camera from (pitch, yaw) and the face camera from the pose: [N, 25], [N, 25], angles [N, 3]."""
    import torch

    from portrait_core import conventions as C
    from portrait_core.geometry.camera import Camera

    if body is None:
        from portrait_core.body.model import BodyModel

        body = BodyModel.synthetic()
    pitch = torch.as_tensor(pitch_yaw[:, 0], dtype=torch.float64)
    yaw = torch.as_tensor(pitch_yaw[:, 1], dtype=torch.float64)
    cam = Camera.portrait(yaw=yaw, pitch=pitch)
    with torch.no_grad():
        b = torch.as_tensor(betas, dtype=torch.float32)
        p = torch.as_tensor(pose_aa, dtype=torch.float32)
        G, _ = body.bone_transforms(b, p)
        centre = body.face_centre(b)
    face = Camera.face(G[:, C.HEAD].double(), centre.double(), yaw=yaw, pitch=pitch)
    ang = cam.pitch_yaw_radius(C.PORTRAIT_LOOK_AT).numpy()
    return cam.to_label25().numpy(), face.to_label25().numpy(), ang


class SHHQFolder(Source):
    """SHHQ-HS-style folder (the AniPortraitGAN release's label semantics), converted to Busto records in memory.

    Layout (docs/data-format.md)::

        images/<name>.png|jpg     512x512 head-and-shoulder portraits (any square size)
        faces/<name>.png          optional face crops (else cropped from the portrait with the face camera)
        masks/<name>.png          optional foreground masks
        names.txt                 one image stem per line; row i of every table belongs to names[i]
        camera_pose.npy [N, 2]    (pitch, yaw) radians, frontal (pi/2, pi/2)
        joint_eulers.npy [N,6,3]  ZYX Euler of SMPL joints 12..17 relative to the canonical pose
        betas.npy [N, 10]         SMPL betas
        id.npy [N, 80]            BFM09 identity (Deep3DFaceRecon)
        expression.npy [N, 64]    BFM09 expression

    or, instead of the five tables, the release's sampler tables: ``camera_pose_joint_sample.npy`` [N, 20]
    (pitch, yaw, 6x3 Euler), ``id_shape_sampler_body.npy`` [N, 90] (80 id + 10 betas), ``expression_body.npy``
    [N, 64], rows aligned with names.txt. A single ``labels.npz`` with the keys names/camera_pose/joint_eulers/
    betas/id/expression is accepted too.
    """

    kind = "shhq"

    def __init__(self, root: str | os.PathLike, strict: bool = True, body=None):
        super().__init__(root)
        self._base = Root(self.root)
        self.label_file = str(self.root)
        t = self._tables()
        names = t["names"]
        n = len(names)
        for key, (fname, shape) in {v[0]: (k, v[1]) for k, v in SHHQ_TABLES.items()}.items():
            arr = t.get(key)
            if arr is None:
                self.problems.append(Problem(str(self.root / fname), key, "missing"))
            elif arr.shape != (n, *shape):
                self.problems.append(Problem(str(self.root / fname), key,
                                             f"expected shape {[n, *shape]} (rows of names.txt), got {list(arr.shape)}"))
        if self.problems:
            if strict:
                raise LabelError([str(p) for p in self.problems])
            return
        aa = _euler_zyx_to_axis_angle(t["joint_eulers"].astype(np.float64))
        cam, face_cam, ang = _derived_cameras(t["camera_pose"].astype(np.float64), aa, t["betas"], body)
        images = {p.stem: p for p in (self.root / "images").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")}
        faces = {p.stem: p for p in (self.root / "faces").glob("*")} if (self.root / "faces").is_dir() else {}
        masks = {p.stem: p for p in (self.root / "masks").glob("*")} if (self.root / "masks").is_dir() else {}
        res = None
        where = []
        for i, name in enumerate(names):
            why = name_problem(name)
            if why:
                self.problems.append(Problem(str(self.root / "names.txt"), f"line {i + 1}", why))
                continue
            if name not in images:
                self.problems.append(Problem(str(self.root / "names.txt"), f"line {i + 1}",
                                             f"no image images/{name}.* for {name!r}"))
                continue
            rec = make_record(
                name, image=images[name].relative_to(self.root).as_posix(),
                mask=masks[name].relative_to(self.root).as_posix() if name in masks else None,
                face=faces[name].relative_to(self.root).as_posix() if name in faces else None,
                camera=cam[i], face_camera=face_cam[i], pose=aa[i], expression=t["expression"][i],
                identity=t["id"][i], body_shape=t["betas"][i],
                camera_angles={"pitch": ang[i, 0], "yaw": ang[i, 1], "radius": ang[i, 2]},
            )
            rec_problems = validate_record(rec, f"images[{len(self.records)}]", self.label_file)
            if rec_problems:
                self.problems += rec_problems
                continue
            self.records.append(rec)
            where.append(f"names.txt line {i + 1} ({name})")
        self._drop_unsafe(where)
        if strict and self.problems:
            raise LabelError([str(p) for p in self.problems])
        res = self._first_resolution()
        self.info = make_info(resolution=res or 512, yaw_mode="frontal", generator="shhq-hs", seed=None,
                              count=len(self.records), face_model="bfm09", body_model="smpl")

    def _tables(self) -> dict[str, np.ndarray]:
        r = self.root
        t: dict[str, Any] = {}
        if (r / "labels.npz").is_file():
            t = load_npz(self._base.locate("labels.npz", str(r)), str(r / "labels.npz"), text_keys=("names",))
            t["names"] = [str(s) for s in np.asarray(t.get("names", [])).reshape(-1)]
            return t
        names_file = r / "names.txt"
        if not names_file.is_file():
            raise LabelError(f"{names_file}: (file): missing (one image stem per line)")
        text = decode_text(read_regular_file(self._base.locate("names.txt", str(r)), str(names_file)), str(names_file))
        t["names"] = [s.strip() for s in text.splitlines() if s.strip()]
        if all((r / f).is_file() for f in SHHQ_SAMPLER_TABLES):
            cj, ids, t["expression"] = (load_npy(self._base.locate(f, str(r)), str(r / f)) for f in SHHQ_SAMPLER_TABLES)
            if cj.ndim == 2 and cj.shape[1] == 20:
                t["camera_pose"], t["joint_eulers"] = cj[:, :2], cj[:, 2:].reshape(-1, 6, 3)
            else:
                self.problems.append(Problem(str(r / SHHQ_SAMPLER_TABLES[0]), "(table)",
                                             f"expected [N, 20], got {list(cj.shape)}"))
            if ids.ndim == 2 and ids.shape[1] == 90:
                t["id"], t["betas"] = ids[:, :80], ids[:, 80:]
            else:
                self.problems.append(Problem(str(r / SHHQ_SAMPLER_TABLES[1]), "(table)",
                                             f"expected [N, 90], got {list(ids.shape)}"))
            return t
        for fname, (key, _) in SHHQ_TABLES.items():
            if (r / fname).is_file():
                try:
                    t[key] = load_npy(self._base.locate(fname, str(r)), str(r / fname))
                except LabelError as e:
                    if isinstance(e, LimitError):
                        raise
                    self.problems.append(Problem(str(r / fname), key, f"cannot be read: {'; '.join(e.problems)}"))
        return t

    def check_path(self, rel: object, what: str) -> None:
        self._base.locate(rel, what)

    def has_file(self, rel: str) -> bool:
        try:
            return self._base.locate(rel, rel).is_file()
        except PathError:
            return False

    def _read(self, rel: str) -> bytes:
        return read_regular_file(self._base.locate(rel, self.describe(rel)), self.describe(rel))


# --- 360°PHQ dataset.json ----------------------------------------------------------------------------------------

class PHQ360(Source):
    """360°PHQ / EG3D-style data: ``dataset.json`` = {"labels": [[name, [31 floats]], ...]} in a folder or zip,
    plus an optional separate mask folder/zip whose files have the same stems.

    31 floats: cam2world (16, OpenCV, world = SMPL frame with the origin at the beta=0 template's neck joint),
    normalised intrinsics (9), neck axis-angle (3) and head axis-angle (3) relative to the SMPL rest pose.
    Converted: camera kept as is; pose[neck] = neck; pose[head] = log(R_head R_adjust^-1) (canonical-relative);
    collars and shoulders at the canonical pose (unknown); expression/identity/betas zeros (listed in each
    record's ``unknown``); the face camera derived from the pose with betas 0 and the portrait camera's
    orbit angles about PORTRAIT_LOOK_AT.
    """

    kind = "phq360"

    def __init__(self, root: str | os.PathLike, masks: str | os.PathLike | None = None, strict: bool = True,
                 body=None):
        super().__init__(root)
        self._zip = self._open_zip(self.root) if self.root.is_file() else None
        self._base = Root(self.root)
        self.label_file = f"{self.root}:dataset.json" if self._zip else str(self.root / "dataset.json")
        self.mask_root = Path(masks) if masks else None
        self._mask_zip = self._open_zip(self.mask_root) if self.mask_root and self.mask_root.is_file() else None
        self._mask_base = Root(self.mask_root) if self.mask_root is not None and self._mask_zip is None else None
        self._pid = os.getpid()
        try:
            data = read_zip_member(self._zip, "dataset.json", self.label_file) if self._zip else \
                read_regular_file(self._base.locate("dataset.json", self.label_file), self.label_file)
        except (KeyError, FileNotFoundError):
            raise LabelError(f"{self.label_file}: (file): not found") from None
        doc = load_labels_json(self.label_file, text=data)
        labels = doc.get("labels") if isinstance(doc, dict) else None
        if not isinstance(labels, list):
            raise LabelError(f"{self.label_file}: labels: missing or not a list of [name, [31 floats]]")
        self._mask_names = self._list_masks()
        good: list[tuple[int, str, np.ndarray]] = []
        for i, entry in enumerate(labels):
            why = self._row_problem(entry, i)
            if why is not None:
                self.problems.append(why)
                continue
            good.append((i, entry[0], np.asarray(entry[1], dtype=np.float64)))
        if strict and self.problems:
            raise LabelError([str(p) for p in self.problems])
        self._build(good, body)
        if strict and self.problems:
            raise LabelError([str(p) for p in self.problems])

    @staticmethod
    def _open_zip(path: Path) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise LabelError(f"{path}: (archive): cannot open: {e}") from None

    def _row_problem(self, entry: Any, i: int) -> Problem | None:
        """Why ``labels[i]`` is not [relative file name, 31 finite numbers with a rigid camera], or None."""
        where = f"labels[{i}]"
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            return Problem(self.label_file, where, "expected [name, [31 floats]]")
        why = path_problem(entry[0])
        if why:
            return Problem(self.label_file, f"{where}[0]", why)
        try:
            arr = np.asarray(entry[1], dtype=np.float64)
        except (TypeError, ValueError, OverflowError, RecursionError):
            arr = None
        if arr is None or arr.shape != (31,) or not np.all(np.isfinite(arr)):
            got = list(np.shape(arr)) if arr is not None else type(entry[1]).__name__
            return Problem(self.label_file, f"{where}[1]", f"expected 31 finite numbers, got {got}")
        why = check_camera25(arr[:25])
        if why:
            return Problem(self.label_file, f"{where}[1]", f"camera (numbers 0..24): {why}")
        return None

    def _list_masks(self) -> dict[str, str]:
        if self._mask_zip is not None:
            names = self._mask_zip.namelist()
        elif self.mask_root is not None and self.mask_root.is_dir():
            names = [p.relative_to(self.mask_root).as_posix() for p in self.mask_root.rglob("*") if p.is_file()]
        elif self.mask_root is not None:
            raise LabelError(f"{self.mask_root}: (masks): not found (expected a folder or zip of masks)")
        else:
            return {}
        return {os.path.splitext(n)[0]: n for n in names if not n.endswith("/")}

    def _build(self, good, body) -> None:
        import torch

        from portrait_core import conventions as C
        from portrait_core.geometry.camera import Camera
        from portrait_core.geometry.rotations import axis_angle_to_matrix, euler_zyx_to_matrix, matrix_to_axis_angle

        if not good:
            return
        lab = np.stack([g[2] for g in good])
        adj = euler_zyx_to_matrix(torch.tensor(C.CANONICAL_ADJUST_EULER_ZYX[C.HEAD], dtype=torch.float64))
        head = axis_angle_to_matrix(torch.as_tensor(lab[:, 28:31])) @ adj.T
        pose = np.zeros((len(good), 6, 3))
        pose[:, 0] = lab[:, 25:28]
        pose[:, 3] = matrix_to_axis_angle(head).numpy()
        cam = Camera.from_label25(torch.as_tensor(lab[:, :25]))
        ang = cam.pitch_yaw_radius(C.PORTRAIT_LOOK_AT).numpy()
        if body is None:
            from portrait_core.body.model import BodyModel

            body = BodyModel.synthetic()
        with torch.no_grad():
            b = torch.zeros(len(good), 10)
            G, _ = body.bone_transforms(b, torch.as_tensor(pose, dtype=torch.float32))
            centre = body.face_centre(b)
        face = Camera.face(G[:, C.HEAD].double(), centre.double(), yaw=torch.as_tensor(ang[:, 1]),
                           pitch=torch.as_tensor(ang[:, 0]))
        face_lab = face.to_label25().numpy()
        where = []
        names: dict[str, int] = {}
        for i, (row_index, name, row) in enumerate(good):
            stem = os.path.splitext(name)[0]
            mask = self._mask_names.get(stem)
            at = f"labels[{row_index}]"
            rec_name = stem.replace("/", "_")
            if rec_name in names:
                self.problems.append(Problem(self.label_file, f"{at}[0]", f"{name!r} gives the record name "
                                             f"{rec_name!r} of labels[{names[rec_name]}]"))
                continue
            names[rec_name] = row_index
            rec = make_record(
                rec_name, image=name, mask=f"@mask/{mask}" if mask else None, face=None,
                camera=row[:25], face_camera=face_lab[i], pose=pose[i], expression=np.zeros(64),
                identity=np.zeros(80), body_shape=np.zeros(10),
                camera_angles={"pitch": ang[i, 0], "yaw": ang[i, 1], "radius": ang[i, 2]},
                unknown=["body_shape", "expression", "identity", "pose[collars,shoulders]"],
            )
            rec["phq360"] = {"label31": np.round(row, 7).tolist()}
            rec_problems = validate_record(rec, at, self.label_file)
            if rec_problems:  # e.g. a camera at the look-at point: no face camera
                self.problems += rec_problems
                continue
            self.records.append(rec)
            where.append(at)
        self._drop_unsafe(where)
        res = self._first_resolution()
        self.info = make_info(resolution=res or 512, yaw_mode="360", generator="360phq", seed=None,
                              count=len(self.records), face_model="unknown", body_model="smpl")

    def check_path(self, rel: object, what: str) -> None:
        if isinstance(rel, str) and rel.startswith("@mask/"):
            if self._mask_base is not None:
                self._mask_base.locate(rel[6:], what)
            else:
                super().check_path(rel[6:], what)
        elif self._zip is None:
            self._base.locate(rel, what)
        else:
            super().check_path(rel, what)

    def describe(self, rel: str) -> str:
        if rel.startswith("@mask/"):
            return f"{self.mask_root}:{rel[6:]}" if self._mask_zip else str(self.mask_root / rel[6:])
        return f"{self.root}:{rel}" if self._zip else str(self.root / rel)

    def has_file(self, rel: str) -> bool:
        if rel.startswith("@mask/"):
            return rel[6:] in self._mask_names.values()
        if self._zip is not None:
            if getattr(self, "_names", None) is None:
                self._names = set(self._zip.namelist())
            return rel in self._names
        try:
            return self._base.locate(rel, rel).is_file()
        except PathError:
            return False

    def _reopen_after_fork(self) -> None:
        """zip handles share a file offset across fork(): each process opens its own."""
        if getattr(self, "_pid", None) != os.getpid():
            if self._zip is not None:
                self._zip = zipfile.ZipFile(self.root)
            if self._mask_zip is not None:
                self._mask_zip = zipfile.ZipFile(self.mask_root)
            self._pid = os.getpid()

    def _read(self, rel: str) -> bytes:
        self._reopen_after_fork()
        what = self.describe(rel)
        if rel.startswith("@mask/"):
            if self._mask_zip is not None:
                return read_zip_member(self._mask_zip, rel[6:], what)
            return read_regular_file(self._mask_base.locate(rel[6:], what), what)
        if self._zip is not None:
            return read_zip_member(self._zip, rel, what)
        return read_regular_file(self._base.locate(rel, what), what)

    def __getstate__(self):
        """Picklable for DataLoader workers: zip handles are reopened in the receiving process."""
        d = dict(self.__dict__)
        d["_zip_paths"] = (str(self.root) if self._zip is not None else None,
                           str(self.mask_root) if self._mask_zip is not None else None)
        d["_zip"] = d["_mask_zip"] = None
        return d

    def __setstate__(self, d):
        paths = d.pop("_zip_paths")
        self.__dict__.update(d)
        self._zip = zipfile.ZipFile(paths[0]) if paths[0] else None
        self._mask_zip = zipfile.ZipFile(paths[1]) if paths[1] else None
        self._names = None
        self._pid = os.getpid()


# --- detection and conversion ------------------------------------------------------------------------------------

def detect_format(path: str | os.PathLike) -> str:
    """'busto' | 'busto-zip' | 'shhq' | 'phq360' for a folder or archive; LabelError if none matches."""
    p = Path(path)
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
        if LABELS_FILE in names:
            return "busto-zip"
        if "dataset.json" in names:
            return "phq360"
        raise LabelError(f"{p}: (archive): holds neither {LABELS_FILE} nor dataset.json")
    if p.is_dir():
        if (p / LABELS_FILE).is_file():
            return "busto"
        if (p / "dataset.json").is_file():
            return "phq360"
        if (p / "names.txt").is_file() or (p / "labels.npz").is_file():
            return "shhq"
        raise LabelError(f"{p}: (folder): no {LABELS_FILE}, dataset.json, names.txt or labels.npz")
    raise LabelError(f"{p}: (path): not found or not a folder/zip")


def open_source(path: str | os.PathLike, fmt: str = "auto", strict: bool = True, masks: str | None = None,
                body=None) -> Source:
    """Open a dataset in any supported format as a :class:`Source` (``strict``: raise LabelError on problems)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "busto":
        return BustoFolder(path, strict=strict)
    if fmt in ("busto-zip", "zip"):
        return BustoZip(path, strict=strict)
    if fmt == "shhq":
        return SHHQFolder(path, strict=strict, body=body)
    if fmt == "phq360":
        return PHQ360(path, masks=masks, strict=strict, body=body)
    raise ValueError(f"unknown format {fmt!r}")


def crop_face(image: np.ndarray, camera25: np.ndarray, face_camera25: np.ndarray, size: int) -> np.ndarray:
    """Face crop from a portrait: warp ``image`` (uint8 [H, W, C]) into the face camera's view.

    Exact for points on the plane through the face camera's look-at point facing the face camera (the homography
    it induces between the two cameras); elsewhere an approximation, like a real dataset's face crop.
    Pixels outside the portrait are white (the background). Returns uint8 [size, size, C].
    """
    from PIL import Image

    from portrait_core import conventions as C

    P = np.asarray(camera25, dtype=np.float64)
    F = np.asarray(face_camera25, dtype=np.float64)
    Mp, Kp = P[:16].reshape(4, 4), P[16:].reshape(3, 3)
    Mf, Kf = F[:16].reshape(4, 4), F[16:].reshape(3, 3)
    H, W = image.shape[:2]
    cf, cp = Mf[:3, 3], Mp[:3, 3]
    Rf, Rp = Mf[:3, :3], Mp[:3, :3]
    # plane through the face camera's orbit centre (FACE_RADIUS along its axis), facing the face camera:
    # a face-camera ray v (camera frame) hits it at X = cf + Rf v * (d / v_z); in the portrait camera that is
    # proportional to Rp^T (Rf + (cf - cp) e3^T / d) v  -> the plane-induced homography
    d = C.FACE_RADIUS
    A = Rf + np.outer(cf - cp, np.array([0.0, 0.0, 1.0])) / d
    # continuous pixel coordinates (pixel j spans [j, j + 1]) on both sides, as PIL's transform uses
    Hm = np.diag([W, H, 1.0]) @ Kp @ Rp.T @ A @ np.linalg.inv(np.diag([size, size, 1.0]) @ Kf)
    Hm = Hm / Hm[2, 2]
    im = Image.fromarray(image)
    fill = tuple([255] * len(im.getbands())) if im.mode != "L" else 255
    out = im.transform((size, size), Image.Transform.PERSPECTIVE, tuple(Hm.ravel()[:8]), Image.Resampling.BILINEAR,
                       fillcolor=fill)
    arr = np.asarray(out).copy()
    return arr


def convert(source: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", resolution: int | None = None,
            face_resolution: int = 128, mask_zip: str | None = None, on_error: str = "raise",
            smpl: str | os.PathLike | None = None) -> Path:
    """Convert any supported dataset to Busto's folder format (images, masks, faces as PNG + labels.json).

    Missing face crops are cut from the portrait with :func:`crop_face`; missing masks become all-foreground.
    ``on_error='skip'`` drops records with label or image problems (reported as warnings) instead of raising.
    ``smpl``: an SMPL model file (.pkl/.npz) for the face cameras of SHHQ-HS/360PHQ data (default: the synthetic
    body, whose skeleton approximates SMPL's).
    """
    import warnings

    from PIL import Image

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    check_resolution(resolution, "convert: resolution", allow_none=True)
    check_resolution(face_resolution, "convert: face_resolution")
    body = None
    if smpl is not None:
        from portrait_core.body.model import BodyModel

        body = BodyModel.from_file(smpl)
    src = open_source(source, fmt=fmt, strict=(on_error == "raise"), masks=mask_zip, body=body)
    if src.problems:
        warnings.warn("skipping records with problems:\n  " + "\n  ".join(map(str, src.problems)), stacklevel=2)
    out = Path(out)
    for sub in ("images", "masks", "faces"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    dest = Root(out)
    records, errors, written = [], [], {}
    for i, rec in enumerate(src.records):
        name = rec["name"]
        try:
            what = f"{src.label_file}: record {i} ({name!r}) written to {out}"
            why = name_problem(name)
            if why:
                raise PathError(f"{what}: {why}")
            if name in written:
                raise LabelError(f"{what}: name {name!r} is used by record {written[name]} too")
            targets = {sub: dest.locate(f"{sub}/{name}.png", what) for sub in ("images", "masks", "faces")}
            try:
                json.dumps(rec, allow_nan=False)
            except (ValueError, TypeError) as e:
                raise LabelError(f"{what}: the record cannot be written as JSON ({e})") from None
            img = src.read_png(rec["image"], "RGB")
            if rec.get("mask"):
                mask = src.read_png(rec["mask"], "L")
            else:
                mask = np.full(img.shape[:2], 255, np.uint8)
            res = resolution or img.shape[1]
            if img.shape[0] != img.shape[1]:
                raise OSError(f"{src.describe(rec['image'])}: image is not square ({img.shape[1]}x{img.shape[0]})")
            face = src.read_png(rec["face"], "RGB") if rec.get("face") else crop_face(img, rec["camera"],
                                                                                        rec["face_camera"],
                                                                                        face_resolution)
        except (OSError, LabelError) as e:
            if on_error != "skip":
                raise
            errors.append("; ".join(e.problems) if isinstance(e, LabelError) else str(e))
            continue
        _save_png(Image.fromarray(img).resize((res, res), Image.Resampling.LANCZOS), targets["images"])
        _save_png(Image.fromarray(mask).resize((res, res), Image.Resampling.BILINEAR), targets["masks"])
        _save_png(Image.fromarray(face).resize((face_resolution, face_resolution), Image.Resampling.LANCZOS),
                  targets["faces"])
        written[name] = i
        new = dict(rec, image=f"images/{name}.png", mask=f"masks/{name}.png", face=f"faces/{name}.png")
        records.append(new)
    if errors:
        warnings.warn("skipped unreadable images:\n  " + "\n  ".join(errors), stacklevel=2)
    info = {k: v for k, v in src.info.items() if _json_safe(v)}
    info.update(resolution=resolution or src.info.get("resolution") or (records and res) or None,
                face_resolution=face_resolution, count=len(records), converted_from=f"{src.kind}:{Path(source).name}")
    return write_labels(out, info, records)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return False
    return True


def _save_png(im, path: Path) -> None:
    """Write a PNG through a temporary file in the same folder and ``os.replace`` (never half-written)."""
    from portrait_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def load_records_json(text: str) -> Any:
    return json.loads(text)
