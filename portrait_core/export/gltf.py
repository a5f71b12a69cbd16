"""glTF 2.0 binary (.glb) writer with pygltflib: mesh, skin, morph targets, keyframe animation; .obj/.ply via trimesh.

glTF is Y-up, metres, and its front is +Z — exactly the SMPL/canonical frame (docs/CONVENTIONS.md), so positions
are written unchanged (the canonical neck joint J12 is the scene origin). Importers convert to their own frame
(Blender: (x, y, z) -> (x, -z, y)).

What the file holds (see docs/export.md):
- one mesh: POSITION (float32, min/max), NORMAL, COLOR_0 (float32 RGBA, **linear**; the mesh's sRGB colours are
  decoded) — or, for a textured mesh, TEXCOORD_0 and a PNG ``baseColorTexture`` (sRGB) instead — uint32 indices; with a rig also JOINTS_0 (uint16 VEC4) and WEIGHTS_0 (float32 VEC4, rows sum to 1);
  morph targets (POSITION deltas, metres) named in ``mesh.extras.targetNames``; default weights 0;
- a skin whose joints are nodes named after SMPL joints, parented as in SMPL, with local translations (rest pose =
  canonical pose, identity rotations) and column-major inverse bind matrices;
- optionally one animation: LINEAR rotation tracks (quaternions x, y, z, w) for the six pose joints and a morph
  weights track.
Every bufferView starts on a 4-byte boundary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from portrait_core.conventions import POSE_JOINTS
from portrait_core.export.extract import EmptyFieldError, Mesh
from portrait_core.export.rig import Rig
from portrait_core.geometry.rotations import matrix_to_quaternion

_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class Animation:
    """Keyframes: times [T] seconds (increasing), pose [T,6,3] axis-angle relative to the canonical pose
    (joints 12..17), morph_weights [T,K] (one column per morph target, in the writer's morph order) or None."""

    times: np.ndarray
    pose: np.ndarray
    morph_weights: np.ndarray | None = None
    name: str = "keyframes"

    def __post_init__(self):
        self.times = np.asarray(self.times, dtype=np.float32).reshape(-1)
        self.pose = np.asarray(self.pose, dtype=np.float64)
        if self.pose.shape != (len(self.times), len(POSE_JOINTS), 3):
            raise ValueError(f"pose must be [T,6,3] with T={len(self.times)}, got {self.pose.shape}")
        if len(self.times) < 1 or np.any(np.diff(self.times) <= 0):
            raise ValueError("animation times must be non-empty and strictly increasing")
        if self.morph_weights is not None:
            self.morph_weights = np.asarray(self.morph_weights, dtype=np.float32)
            if self.morph_weights.ndim != 2 or self.morph_weights.shape[0] != len(self.times):
                raise ValueError(f"morph_weights must be [T,K], got {self.morph_weights.shape}")


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0,1] -> linear (IEC 61966-2-1)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


class _Builder:
    """Accumulates one binary buffer with 4-byte aligned bufferViews and the accessors that read them."""

    def __init__(self):
        import pygltflib

        self.g = pygltflib
        self.blob = bytearray()
        self.views: list = []
        self.accessors: list = []

    def add(self, array: np.ndarray, component: int, type_: str, *, target: int | None = None,
            minmax: bool = False) -> int:
        arr = np.ascontiguousarray(array)
        pad = (-len(self.blob)) % 4
        self.blob += b"\0" * pad
        offset = len(self.blob)
        self.blob += arr.tobytes()
        self.views.append(self.g.BufferView(buffer=0, byteOffset=offset, byteLength=arr.nbytes, target=target))
        count = arr.shape[0] if type_ != "SCALAR" else arr.size
        acc = self.g.Accessor(bufferView=len(self.views) - 1, byteOffset=0, componentType=component, count=int(count),
                              type=type_)
        if minmax:
            flat = arr.reshape(count, -1)
            acc.min = [float(x) if component == _FLOAT else int(x) for x in flat.min(0)]
            acc.max = [float(x) if component == _FLOAT else int(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive keys [T,4] have non-negative dot products (shortest per-channel interpolation)."""
    q = q.copy()
    for t in range(1, len(q)):
        if np.dot(q[t], q[t - 1]) < 0:
            q[t] = -q[t]
    return q


def build_gltf(
    mesh: Mesh,
    rig: Rig | None = None,
    morphs: dict[str, np.ndarray] | None = None,
    animation: Animation | Sequence[Animation] | None = None,
    *,
    name: str = "busto_avatar",
    extras: dict | None = None,
):
    """Assemble a ``pygltflib.GLTF2`` (with its binary blob set) for :func:`write_glb`; one glTF animation per
    :class:`Animation` given."""
    import pygltflib as g

    if mesh.num_faces == 0 or mesh.num_vertices == 0:
        raise EmptyFieldError("refusing to write a glTF file with an empty mesh")
    V = mesh.num_vertices
    b = _Builder()
    verts = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    attrs = g.Attributes(
        POSITION=b.add(verts, _FLOAT, "VEC3", target=_ARRAY_BUFFER, minmax=True),
        NORMAL=b.add(np.asarray(mesh.normals, np.float32), _FLOAT, "VEC3", target=_ARRAY_BUFFER),
    )
    textured = mesh.uvs is not None and mesh.texture is not None
    if textured:
        uvs = np.asarray(mesh.uvs, np.float32)
        if uvs.shape != (V, 2):
            raise ValueError(f"mesh uvs must be [{V},2], got {uvs.shape}")
        attrs.TEXCOORD_0 = b.add(uvs, _FLOAT, "VEC2", target=_ARRAY_BUFFER)
    elif mesh.colors is not None:  # a texture replaces the vertex colours (glTF multiplies COLOR_0 into it)
        rgba = np.ones((V, 4), np.float32)
        rgba[:, :3] = srgb_to_linear(mesh.colors[:, :3])
        attrs.COLOR_0 = b.add(rgba, _FLOAT, "VEC4", target=_ARRAY_BUFFER)
    if rig is not None:
        if rig.joints.shape != (V, 4) or rig.weights.shape != (V, 4):
            raise ValueError(f"rig skin arrays must be [{V},4], got {rig.joints.shape} and {rig.weights.shape}")
        attrs.JOINTS_0 = b.add(rig.joints.astype(np.uint16), _USHORT, "VEC4", target=_ARRAY_BUFFER)
        attrs.WEIGHTS_0 = b.add(rig.weights.astype(np.float32), _FLOAT, "VEC4", target=_ARRAY_BUFFER)
    indices = b.add(np.asarray(mesh.faces, np.uint32).reshape(-1), _UINT, "SCALAR", target=_ELEMENT_ARRAY_BUFFER,
                    minmax=True)
    targets, names = [], []
    for mname, delta in (morphs or {}).items():
        delta = np.asarray(delta, dtype=np.float32)
        if delta.shape != (V, 3):
            raise ValueError(f"morph {mname!r} must be [{V},3], got {delta.shape}")
        targets.append({"POSITION": b.add(delta, _FLOAT, "VEC3", target=_ARRAY_BUFFER, minmax=True)})
        names.append(str(mname))
    material = g.Material(
        name=f"{name}_{'texture' if textured else 'vertex_colour'}",
        pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                                     roughnessFactor=0.8),
        doubleSided=False,
    )
    images, textures, samplers_ = [], [], []
    if textured:
        png = _png_bytes(mesh.texture)
        pad = (-len(b.blob)) % 4
        b.blob += b"\0" * pad
        b.views.append(g.BufferView(buffer=0, byteOffset=len(b.blob), byteLength=len(png)))
        b.blob += png
        images.append(g.Image(name=f"{name}_baked", bufferView=len(b.views) - 1, mimeType="image/png"))
        samplers_.append(g.Sampler(magFilter=9729, minFilter=9987, wrapS=33071, wrapT=33071))  # linear, clamp
        textures.append(g.Texture(sampler=0, source=0))
        material.pbrMetallicRoughness.baseColorTexture = g.TextureInfo(index=0)
    prim = g.Primitive(attributes=attrs, indices=indices, material=0, mode=4)
    if targets:
        prim.targets = [g.Attributes(**t) for t in targets]
    gmesh = g.Mesh(name=f"{name}_mesh", primitives=[prim])
    if targets:
        gmesh.weights = [0.0] * len(targets)
        gmesh.extras = {"targetNames": names}
    nodes = [g.Node(name=f"{name}_mesh", mesh=0)]
    scene_nodes = [0]
    skins = []
    joint_node = {}
    if rig is not None:
        first = len(nodes)
        for j in range(rig.num_joints):
            p = rig.parents[j]
            t = rig.joint_positions[j] - (rig.joint_positions[p] if p >= 0 else 0.0)
            nodes.append(g.Node(name=rig.joint_names[j], translation=[float(x) for x in t]))
            joint_node[j] = first + j
        for j in range(rig.num_joints):
            p = rig.parents[j]
            if p >= 0:
                nodes[first + p].children.append(first + j)
        roots = [first + j for j in range(rig.num_joints) if rig.parents[j] < 0]
        # the skeleton under one root node (the armature object in Blender); the skinned mesh node stays a scene
        # root (glTF: parent transforms do not apply to skinned meshes)
        nodes.append(g.Node(name=name, children=roots))
        scene_nodes = [0, len(nodes) - 1]
        ibm = np.ascontiguousarray(np.transpose(rig.inverse_bind_matrices, (0, 2, 1)), dtype=np.float32)  # column-major
        skins.append(g.Skin(name=f"{name}_skin", joints=[first + j for j in range(rig.num_joints)],
                            skeleton=roots[0], inverseBindMatrices=b.add(ibm.reshape(-1, 16), _FLOAT, "MAT4")))
        nodes[0].skin = 0
    animations = []
    anims = [] if animation is None else [animation] if isinstance(animation, Animation) else list(animation)
    if anims and rig is None:
        raise ValueError("an animation needs a rig")
    for animation in anims:
        tacc = b.add(animation.times.astype(np.float32), _FLOAT, "SCALAR", minmax=True)
        samplers, channels = [], []
        local = rig.local_rotations(animation.pose)  # [T,J,3,3]
        for jid in POSE_JOINTS:
            j = rig.joint_ids.index(jid)
            q = matrix_to_quaternion(torch.as_tensor(local[:, j])).numpy()  # (w,x,y,z)
            q = _continuous_quaternions(q[:, [1, 2, 3, 0]])  # glTF order (x,y,z,w)
            out = b.add(q.astype(np.float32), _FLOAT, "VEC4")
            samplers.append(g.AnimationSampler(input=tacc, output=out, interpolation="LINEAR"))
            channels.append(g.AnimationChannel(sampler=len(samplers) - 1,
                                               target=g.AnimationChannelTarget(node=joint_node[j], path="rotation")))
        if animation.morph_weights is not None:
            if animation.morph_weights.shape[1] != len(targets):
                raise ValueError(f"animation has {animation.morph_weights.shape[1]} morph weight columns for "
                                 f"{len(targets)} morph targets")
            if targets:
                out = b.add(animation.morph_weights.astype(np.float32).reshape(-1), _FLOAT, "SCALAR")
                samplers.append(g.AnimationSampler(input=tacc, output=out, interpolation="LINEAR"))
                channels.append(g.AnimationChannel(sampler=len(samplers) - 1,
                                                   target=g.AnimationChannelTarget(node=0, path="weights")))
        animations.append(g.Animation(name=animation.name, samplers=samplers, channels=channels))
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="Busto portrait_core.export"),
        scene=0,
        scenes=[g.Scene(name=name, nodes=scene_nodes)],
        nodes=nodes,
        meshes=[gmesh],
        materials=[material],
        images=images,
        textures=textures,
        samplers=samplers_,
        skins=skins,
        animations=animations,
        accessors=b.accessors,
        bufferViews=b.views,
        buffers=[g.Buffer(byteLength=len(b.blob) + ((-len(b.blob)) % 4))],
    )
    b.blob += b"\0" * ((-len(b.blob)) % 4)
    meta = {"frame": "SMPL canonical: +Y up, +Z forward, +X subject's left, metres, origin = canonical neck J12",
            "colors": ("baseColorTexture (sRGB PNG) baked from the neural renderer, TEXCOORD_0" if textured else
                       "COLOR_0 linear RGB from sRGB vertex colours")}
    meta.update(extras or {})
    gltf.extras = {"busto": json.loads(json.dumps(meta, default=_json_default))}
    gltf.set_binary_blob(bytes(b.blob))
    return gltf


def _png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H,W,3] sRGB -> PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _json_default(o):
    if isinstance(o, np.ndarray | np.generic):
        return o.tolist()
    return str(o)


def write_glb(
    path: str | Path,
    mesh: Mesh,
    rig: Rig | None = None,
    morphs: dict[str, np.ndarray] | None = None,
    animation: Animation | Sequence[Animation] | None = None,
    **kw,
) -> Path:
    """Write a binary glTF (.glb); returns the path. Never writes a file for an empty mesh."""
    path = Path(path)
    gltf = build_gltf(mesh, rig, morphs, animation, **kw)
    from portrait_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        gltf.save_binary(str(tmp))
    return path


def write_mesh(path: str | Path, mesh: Mesh) -> Path:
    """Static mesh as .obj or .ply (trimesh; 8-bit sRGB vertex colours); .glb goes through :func:`write_glb`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if mesh.num_faces == 0:
        raise EmptyFieldError("refusing to write an empty mesh")
    if suffix == ".glb":
        return write_glb(path, mesh)
    if suffix not in (".obj", ".ply"):
        raise ValueError(f"unsupported mesh format {suffix!r}: use .glb, .obj or .ply")
    path.parent.mkdir(parents=True, exist_ok=True)
    tm = mesh.to_trimesh()
    data = tm.export(file_type=suffix[1:], include_normals=True) if suffix == ".obj" else tm.export(file_type="ply")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as fh:
        fh.write(data)
    return path
