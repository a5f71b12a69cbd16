"""The synthetic dataset driver: workers with one Blender scene each, resumable output, progress bar.

``synthesize(out, count, ...)`` writes Busto's dataset format (docs/data-format.md): ``images/NNNNNN.png`` (RGB on
white), ``masks/`` (alpha), ``faces/`` (face-camera crops), optional ``meshes/NNNNNN_{posed,canonical}.ply``, one
``records/NNNNNN.json`` per finished image (written atomically after its files, so a killed run resumes by
skipping finished images) and finally ``labels.json``. Image ``i`` is a pure function of (seed, i): its identity
comes from ``default_rng([seed, i // views_per_identity, 0])`` and its view from ``default_rng([seed, i, 1])``, and
the Cycles sampling seed is derived from both, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..labels import LabelError, make_info, make_record, write_json_atomic, write_labels

GENERATOR = "busto-synth"
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one synthetic dataset (the ones that change pixels or labels are checked on resume)."""

    count: int
    resolution: int = 128
    face_resolution: int | None = None  # default: same as resolution
    yaw_mode: str = "frontal"  # 'frontal' | '360'
    seed: int = 0
    meshes: bool = False
    samples: int = 4  # Cycles samples per pixel
    views_per_identity: int = 1

    @property
    def face_res(self) -> int:
        return int(self.face_resolution or self.resolution)

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("count")
        d["face_resolution"] = self.face_res
        d["generator_version"] = GENERATOR_VERSION
        return d


def stem(index: int) -> str:
    return f"{index:06d}"


# --- per-process worker state -----------------------------------------------------------------------------------
_W: dict = {}


def _worker_init(cfg: SynthConfig, out: str, threads: int) -> None:
    """Pool initializer. A failure is kept and re-raised by the first task: a pool whose initializer raises
    would otherwise replace its dying workers forever and hang the driver."""
    try:
        _worker_setup(cfg, out, threads)
    except BaseException as exc:  # noqa: BLE001 - reported through _worker_run
        import traceback

        _W["init_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _strip_blender_script_paths() -> None:
    """A spawned worker inherits the parent's sys.path. If the parent had imported bpy, that path holds Blender's
    own ``scripts/modules`` folder, whose inner ``bpy`` package would shadow the bpy extension module."""
    sys.path[:] = [p for p in sys.path if not (os.sep + "scripts" + os.sep in p and os.sep + "bpy" + os.sep in p)]


def _worker_setup(cfg: SynthConfig, out: str, threads: int) -> None:
    """Build the models, the avatar factory and the Blender scene once per process."""
    if "bpy" not in sys.modules:
        _strip_blender_script_paths()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from portrait_core.body.model import BodyModel
    from portrait_core.face.model import EXPRESSION_NAMES, FaceModel

    from .avatar import STYLES, AvatarFactory
    from .scene import StudioScene

    body, face = BodyModel.synthetic(), FaceModel.synthetic()
    factory = AvatarFactory(body, face, EXPRESSION_NAMES)
    scene = StudioScene(samples=cfg.samples, threads=threads)
    scene.material("body", roughness=0.65, pattern=True, specular=0.15, sheen=0.2, hideable=True)
    scene.material("face", roughness=0.6, specular=0.15)
    scene.material("hair", roughness=0.45, streaks=True, specular=0.35)
    attrs = (("canon", "FLOAT_VECTOR"), ("cloth", "FLOAT"), ("hide", "FLOAT"))
    zero_b = np.zeros((body.num_vertices, 3))
    scene.add_mesh("body", zero_b, factory.body_faces, "body", attributes=attrs)
    scene.add_mesh("face", np.zeros((face.num_vertices, 3)), factory.face_faces, "face")
    scene.add_mesh("skirt", np.zeros((2 * len(factory.skirt_index), 3)), factory.skirt_faces, "face")
    for name, style in STYLES.items():
        scene.add_mesh(f"hair_{name}", np.zeros((style.num_vertices, 3)), factory.hair_faces[name], "hair",
                       attributes=(("canon", "FLOAT_VECTOR"),))
    _W.update(cfg=cfg, out=Path(out), factory=factory, scene=scene, baked_key=None, baked=None)


def _bake(identity_index: int):
    """Per-identity work (geometry, colours, material parameters), cached while consecutive views share it."""
    cfg, factory, scene = _W["cfg"], _W["factory"], _W["scene"]
    if _W["baked_key"] == identity_index:
        return _W["baked"]
    rng = np.random.default_rng([cfg.seed, identity_index, 0])
    params = factory.sample_identity(rng)
    baked = factory.bake(params)
    scene.set_mesh("body", colors_srgb=baked.body_colours,
                   attributes={"canon": baked.body_canon, "cloth": baked.cloth_mask, "hide": baked.body_hidden})
    scene.set_mesh("face", colors_srgb=baked.face_colours)
    scene.set_mesh("skirt", colors_srgb=np.tile(baked.face_colours[factory.skirt_index], (2, 1)))
    for name in factory.styles:
        scene.set_visible(f"hair_{name}", name == params.hair_style)
    scene.set_mesh(f"hair_{params.hair_style}", colors_srgb=baked.hair_colours, attributes={"canon": baked.hair_canon})
    stripes = 1.0 if params.pattern == "stripes" else 0.0
    checks = 1.0 if params.pattern == "checks" else 0.0
    scene.set_pattern("body", stripes=stripes, checks=checks, freq=params.pattern_freq,
                      direction=tuple(params.pattern_dir), color_srgb=tuple(params.cloth2),
                      cloth_srgb=tuple(params.cloth))
    _W["baked_key"], _W["baked"] = identity_index, baked
    return baked


#: marker colours for landmark checks (pure emission, sRGB)
MARKER_COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0.5, 0), (0.5, 0, 1)]


def render_sample(index: int, markers: tuple[int, ...] | None = None, marker_radius: float = 0.003) -> dict:
    """Render image ``index`` in this worker: returns arrays and labels (nothing written).

    ``markers``: 3DMM landmark ids to show as small emission spheres (colours ``MARKER_COLOURS``), for tests.

    Returns {'image', 'mask', 'face', 'face_mask' (uint8), 'posed' (PosedAvatar), 'baked', 'view'}.
    """
    from .scene import composite_white

    cfg, factory, scene = _W["cfg"], _W["factory"], _W["scene"]
    baked = _bake(index // cfg.views_per_identity)
    view = factory.sample_view(np.random.default_rng([cfg.seed, index, 1]), cfg.yaw_mode)
    posed = factory.pose(baked, view)
    style = baked.params.hair_style
    scene.set_mesh("body", vertices=posed.body)
    scene.set_mesh("face", vertices=posed.face)
    scene.set_mesh("skirt", vertices=posed.skirt)
    scene.set_mesh(f"hair_{style}", vertices=posed.hair)
    if markers is not None:
        if "marker_0" not in scene.objects:
            scene.add_markers(MARKER_COLOURS)
        scene.set_markers(posed.landmarks[list(markers)], marker_radius)
    elif "marker_0" in scene.objects:
        scene.set_markers(None)
    scene.scene.cycles.seed = int(np.random.default_rng([cfg.seed, index, 2]).integers(0, 2**31 - 1))
    scene.set_camera(posed.camera.cam2world[0].numpy(), posed.camera.intrinsics[0].numpy())
    rgba = scene.render(cfg.resolution)
    scene.set_camera(posed.face_camera.cam2world[0].numpy(), posed.face_camera.intrinsics[0].numpy())
    face_rgba = scene.render(cfg.face_res)
    image, mask = composite_white(rgba)
    face, face_mask = composite_white(face_rgba)
    return {"image": image, "mask": mask, "face": face, "face_mask": face_mask, "posed": posed, "baked": baked,
            "view": view}


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    from portrait_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def _record_for(index: int, s: dict, mesh_paths: dict | None) -> dict:
    from portrait_core import conventions as C

    posed, baked, view = s["posed"], s["baked"], s["view"]
    name = stem(index)
    pitch, yaw, radius = (float(t[0]) for t in posed.camera.orbit_params(C.PORTRAIT_LOOK_AT))
    return make_record(
        name, image=f"images/{name}.png", mask=f"masks/{name}.png", face=f"faces/{name}.png",
        camera=posed.camera.to_label25()[0].numpy(), face_camera=posed.face_camera.to_label25()[0].numpy(),
        pose=view.pose, expression=view.expression, identity=baked.params.identity, body_shape=baked.params.betas,
        camera_angles={"pitch": pitch, "yaw": yaw, "radius": radius}, mesh=mesh_paths,
        extra={**baked.params.describe(), "identity_index": index // _W["cfg"].views_per_identity},
    )


def _render_and_write(index: int) -> str:
    out: Path = _W["out"]
    cfg = _W["cfg"]
    s = render_sample(index)
    name = stem(index)
    _write_png(out / "images" / f"{name}.png", s["image"])
    _write_png(out / "masks" / f"{name}.png", s["mask"])
    _write_png(out / "faces" / f"{name}.png", s["face"])
    mesh_paths = None
    if cfg.meshes:
        from .meshes import write_avatar_meshes

        mesh_paths = write_avatar_meshes(out / "meshes", name, _W["factory"], s["baked"], s["view"], s["posed"])
    write_json_atomic(out / "records" / f"{name}.json", _record_for(index, s, mesh_paths))
    return name


def marker_renders(index: int, landmark_ids: tuple[int, ...], radius: float = 0.005,
                   face_radius: float = 0.0025) -> dict:
    """Worker task for tests: the sample with landmark markers (sphere radius in metres: ``radius`` in the
    portrait, ``face_radius`` in the face crop); returns portrait/face RGB arrays."""
    s = render_sample(index, markers=landmark_ids, marker_radius=radius)
    f = render_sample(index, markers=landmark_ids, marker_radius=face_radius)
    return {"image": s["image"], "face": f["face"], "mask": s["mask"]}


def _worker_run(indices: list[int]) -> list[str]:
    if "init_error" in _W:
        raise RuntimeError(f"synthetic renderer worker failed to start: {_W['init_error']}")
    return [_render_and_write(i) for i in indices]


# --- driver ---------------------------------------------------------------------------------------------------

def _check_or_write_config(out: Path, cfg: SynthConfig) -> None:
    path = out / "synth.json"
    fp = cfg.fingerprint()
    if path.exists():
        old = json.loads(path.read_text())
        if old != fp:
            diff = {k: (old.get(k), v) for k, v in fp.items() if old.get(k) != v}
            raise LabelError(f"{path}: (settings): the folder holds a dataset made with other settings "
                             f"(field: (existing, requested)) {diff}; use another --out or the same settings")
    else:
        write_json_atomic(path, fp, indent=1)


def synthesize(out: str | os.PathLike, count: int, resolution: int = 128, yaw_mode: str = "frontal", seed: int = 0,
               face_resolution: int | None = None, meshes: bool = False, workers: int = 1, samples: int = 4,
               views_per_identity: int = 1, threads_per_worker: int = 1, progress: bool = True,
               chunk: int = 4) -> Path:
    """Render (or finish rendering) a synthetic dataset of ``count`` images into ``out``; returns labels.json.

    Finished images (those with a record) are skipped, so re-running resumes a killed run or extends a dataset to a
    larger ``count`` with the same seed. ``workers`` processes (spawned; each owns a Blender) share the work.
    """
    if yaw_mode not in ("frontal", "360"):
        raise ValueError(f"yaw_mode must be 'frontal' or '360', got {yaw_mode!r}")
    if count < 1 or resolution < 8:
        raise ValueError(f"need count >= 1 and resolution >= 8, got {count}, {resolution}")
    cfg = SynthConfig(count=count, resolution=resolution, face_resolution=face_resolution, yaw_mode=yaw_mode,
                      seed=seed, meshes=meshes, samples=samples, views_per_identity=max(1, views_per_identity))
    out = Path(out)
    if out.exists() and not (out / "synth.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise LabelError(f"{out}: (folder): holds other files and no synth.json; synth renders only into a new or "
                         f"empty folder, or one it rendered into before (it never writes into other data)")
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(out, cfg)
    for sub in ("images", "masks", "faces", "records") + (("meshes",) if meshes else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    done = {p.stem for p in (out / "records").glob("*.json")}
    todo = [i for i in range(count) if stem(i) not in done]
    # keep identity groups together so each worker bakes an identity once
    groups: list[list[int]] = []
    for i in todo:
        if groups and i // cfg.views_per_identity == groups[-1][-1] // cfg.views_per_identity \
                and len(groups[-1]) < max(chunk, cfg.views_per_identity):
            groups[-1].append(i)
        elif groups and len(groups[-1]) < chunk and i // cfg.views_per_identity != groups[-1][-1] // cfg.views_per_identity \
                and cfg.views_per_identity == 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    refresh_extra(out, cfg, sorted(done))
    t0 = time.time()
    if todo:
        _run_groups(groups, cfg, out, workers, threads_per_worker, progress, len(todo))
    elapsed = time.time() - t0
    return _finish(out, cfg, count, elapsed, len(todo))


def refresh_extra(out: Path, cfg: SynthConfig, names: list[str]) -> int:
    """Bring the ``extra`` of records written by an older renderer up to date, without rendering: a person's draws
    are a function of (seed, identity index), so they are drawn again and the fields the record lacks are added
    (the draws consume the generator in the same order, so the pixels are the ones rendered then). A record whose
    existing fields disagree with the draw raises ``LabelError`` naming it. Returns how many records changed."""
    from .avatar import sample_identity

    changed = 0
    cache: dict[int, dict] = {}
    for name in names:
        path = out / "records" / f"{name}.json"
        rec = json.loads(path.read_text())
        extra = rec.get("extra") or {}
        index = int(name) // cfg.views_per_identity
        if index not in cache:
            cache[index] = {**sample_identity(np.random.default_rng([cfg.seed, index, 0])).describe(),
                            "identity_index": index}
        now = cache[index]
        if set(now) <= set(extra):
            continue
        clash = [k for k in extra if k in now and extra[k] != now[k]]
        if clash:
            raise LabelError(f"{path}: (extra): {clash} differ from seed {cfg.seed}'s draw for identity {index}; "
                             f"the folder was not rendered by this renderer with these settings")
        rec["extra"] = {**now, **extra}
        write_json_atomic(path, rec)
        changed += 1
    return changed


def _run_groups(groups, cfg, out, workers, threads, progress, total) -> None:
    import multiprocessing as mp

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    ctx = mp.get_context("spawn")
    columns = (TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("render", total=total, rate="")
        t0 = time.time()
        done = 0
        with ctx.Pool(max(1, workers), initializer=_worker_init, initargs=(cfg, str(out), threads)) as pool:
            for names in pool.imap_unordered(_worker_run, groups):
                done += len(names)
                bar.update(task, advance=len(names), rate=f"{done / max(time.time() - t0, 1e-9):.2f} img/s")


def _finish(out: Path, cfg: SynthConfig, count: int, elapsed: float, rendered: int) -> Path:
    """Assemble labels.json from the per-image records (atomically)."""
    records = []
    missing = []
    for i in range(count):
        p = out / "records" / f"{stem(i)}.json"
        if not p.exists():
            missing.append(p.name)
            continue
        records.append(json.loads(p.read_text()))
    if missing:
        raise LabelError([f"{out / 'records'}: {m}: missing after rendering" for m in missing[:20]])
    from portrait_core import __name__ as _pkg  # noqa: F401

    info = make_info(resolution=cfg.resolution, face_resolution=cfg.face_res, yaw_mode=cfg.yaw_mode,
                     generator=f"{GENERATOR} {GENERATOR_VERSION}", seed=cfg.seed, count=count,
                     body_model="synthetic", face_model="synthetic", samples=cfg.samples,
                     views_per_identity=cfg.views_per_identity, background="white",
                     render_seconds_last_run=round(elapsed, 2), rendered_last_run=rendered)
    return write_labels(out, info, records)
