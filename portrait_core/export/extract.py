"""Field -> mesh: grid evaluation, marching cubes (PyMCubes), clean-up, decimation, vertex colours.

Conventions (docs/CONVENTIONS.md): points are metres in the canonical frame (SMPL axes, +Y up, the subject faces
+Z, origin at the canonical neck joint J12). A *field* is a function ``f(points[N,3]) -> values[N]`` on torch
tensors that is **larger inside** the surface (density, occupancy, alpha, or a negated SDF); the surface is
``f == level``. Grid node ``(i, j, k)`` sits at ``lo + (i, j, k) * (hi - lo) / (R - 1)`` (node-centred, both box
faces included). Mesh colours are sRGB-encoded floats in [0, 1] (what an image would show); the glTF writer
converts them to linear for ``COLOR_0``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

FieldFn = Callable[[Tensor], Tensor]
#: ``color_fn(points[N,3], view_dirs[N,3]) -> rgb[N,3]`` sRGB in [0, 1]; view_dirs point from the eye to the point.
ColorFn = Callable[[Tensor, Tensor], Tensor]
Bounds = tuple[Sequence[float], Sequence[float]]


class EmptyFieldError(ValueError):
    """The field has no surface inside the box (all outside or all inside), so there is no mesh to write."""


@dataclass
class Mesh:
    """A triangle mesh in metres (canonical frame unless stated).

    vertices [V,3] float32; faces [F,3] uint32 with counter-clockwise winding seen from outside (outward normals);
    normals [V,3] float32 unit outward vertex normals; colors [V,3] float32 sRGB in [0,1] or None.
    A textured mesh also has ``uvs`` [V,2] float32 (glTF convention: v down from the image's top), ``texture``
    uint8 [S,S,3] sRGB and ``weld`` [V] int64: vertices split along UV seams share a weld id (the index of the
    vertex in the unsplit surface), so normals, skin-weight smoothing and morphs treat the surface as one piece.
    ``info`` holds timings (seconds) and counts from extraction.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None
    weld: np.ndarray | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` (no processing) with 8-bit vertex colours when present."""
        import trimesh

        colors = None
        if self.colors is not None:
            rgb = np.clip(np.round(self.colors[:, :3] * 255.0), 0, 255).astype(np.uint8)
            colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(
            vertices=self.vertices.astype(np.float64), faces=self.faces.astype(np.int64),
            vertex_normals=self.normals, vertex_colors=colors, process=False,
        )

    def volume(self) -> float:
        """Signed enclosed volume in m³ (positive for outward winding); exact for closed meshes."""
        v = self.vertices.astype(np.float64)
        a, b, c = v[self.faces[:, 0]], v[self.faces[:, 1]], v[self.faces[:, 2]]
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)

    def with_vertices(self, vertices: np.ndarray) -> Mesh:
        """Same topology and colours, new positions (normals recomputed)."""
        vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        return replace(self, vertices=vertices, normals=vertex_normals(vertices, self.faces, self.weld),
                       info=dict(self.info))

    def welded(self) -> tuple[np.ndarray, np.ndarray]:
        """(vertices [W,3], faces [F,3]) of the surface with UV-seam duplicates merged (``weld`` ids); the
        mesh itself when it has no seams."""
        if self.weld is None:
            return self.vertices, self.faces
        v = np.zeros((int(self.weld.max()) + 1, 3), self.vertices.dtype)
        v[self.weld] = self.vertices
        return v, self.weld[np.asarray(self.faces, np.int64)].astype(np.uint32)

    def unsplit(self) -> tuple[Mesh, np.ndarray | None]:
        """(the welded mesh with per-vertex arrays of the first split copy, per-corner UVs [F,3,2] or None): the
        form of tools that store UVs per face corner (Blender)."""
        if self.weld is None:
            return self, None
        v, f = self.welded()
        first = np.zeros(len(v), np.int64)
        first[self.weld[::-1]] = np.arange(len(self.weld))[::-1]
        mesh = Mesh(v, f, self.normals[first], None if self.colors is None else self.colors[first], dict(self.info))
        loop_uvs = None if self.uvs is None else self.uvs[np.asarray(self.faces, np.int64)]
        return mesh, loop_uvs

    def split(self, vmap: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray) -> Mesh:
        """The textured mesh of a UV layout: vertex ``i`` copies vertex ``vmap[i]`` of this (unsplit) mesh."""
        vmap = np.asarray(vmap, np.int64)
        weld = vmap if self.weld is None else self.weld[vmap]
        return Mesh(self.vertices[vmap], np.asarray(faces, np.uint32), self.normals[vmap],
                    None if self.colors is None else self.colors[vmap], dict(self.info),
                    np.asarray(uvs, np.float32), np.asarray(texture, np.uint8), weld)


# --- grids ------------------------------------------------------------------------------------------------------

def _resolution3(resolution: int | Sequence[int]) -> tuple[int, int, int]:
    r = (int(resolution),) * 3 if np.isscalar(resolution) else tuple(int(x) for x in resolution)
    if len(r) != 3 or min(r) < 2:
        raise ValueError(f"resolution must be an int or 3 ints >= 2, got {resolution!r}")
    return r  # type: ignore[return-value]


def grid_shape(bounds: Bounds, resolution: int | Sequence[int]) -> tuple[int, int, int]:
    """Nodes per axis: an int is the count along the box's longest axis, the others are scaled for cubic voxels."""
    if not np.isscalar(resolution):
        return _resolution3(resolution)
    lo, hi = _bounds_arrays(bounds)
    ext = hi - lo
    r = int(resolution)
    if r < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution!r}")
    return tuple(max(2, int(round((r - 1) * e / ext.max())) + 1) for e in ext)  # type: ignore[return-value]


def _bounds_arrays(bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = (np.asarray(b, dtype=np.float64).reshape(3) for b in bounds)
    if not np.all(hi > lo):
        raise ValueError(f"bounds must be (min xyz, max xyz) with max > min, got {bounds!r}")
    return lo, hi


def _eval_points(field_fn: FieldFn, pts: Tensor) -> Tensor:
    values = field_fn(pts)
    values = values.reshape(-1)
    if values.shape[0] != pts.shape[0]:
        raise ValueError(f"field returned {values.shape[0]} values for {pts.shape[0]} points")
    return values.to(torch.float32)


@torch.no_grad()
def evaluate_grid(
    field_fn: FieldFn,
    bounds: Bounds,
    resolution: int | Sequence[int],
    *,
    chunk_size: int = 1 << 18,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Evaluate ``field_fn`` on every node of an R³ grid over ``bounds`` -> float32 [Rx, Ry, Rz].

    Batched: the grid is fed as x-slabs of about ``chunk_size`` points (a [n, 3] float32 tensor per call).
    """
    rx, ry, rz = _resolution3(resolution)
    lo, hi = _bounds_arrays(bounds)
    axes = [torch.linspace(float(lo[a]), float(hi[a]), n, dtype=torch.float32, device=device)
            for a, n in enumerate((rx, ry, rz))]
    out = np.empty((rx, ry, rz), dtype=np.float32)
    slab = max(1, chunk_size // (ry * rz))
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
    for i0 in range(0, rx, slab):
        xs = axes[0][i0:i0 + slab]
        pts = torch.cat([xs.repeat_interleave(yz.shape[0])[:, None], yz.repeat(len(xs), 1)], dim=1)
        out[i0:i0 + len(xs)] = _eval_points(field_fn, pts).reshape(len(xs), ry, rz).cpu().numpy()
    return out


@torch.no_grad()
def evaluate_grid_sparse(
    field_fn: FieldFn,
    bounds: Bounds,
    resolution: int | Sequence[int],
    level: float,
    *,
    stride: int = 4,
    chunk_size: int = 1 << 18,
    device: str | torch.device = "cpu",
    max_rounds: int = 64,
) -> tuple[np.ndarray, float]:
    """Coarse-to-fine grid that follows the surface: exact values only in cells the surface passes through.

    1. The field is evaluated on every ``stride``-th node (coarse cells of ``stride``³ voxels).
    2. Cells whose corners straddle ``level`` are evaluated at full resolution.
    3. Wherever the exact values on a cell face straddle ``level``, the surface continues into the neighbour cell,
       which is evaluated too; repeated until no face of an evaluated cell leads anywhere new.
    Every other node gets the trilinear interpolation of the coarse values (on the cell's side of ``level``).
    Marching cubes on the result equals the dense result for every surface component that crosses at least one
    coarse edge; components hidden entirely inside one coarse cell (thinner than ``stride`` voxels) are lost.
    Returns (grid float32 [Rx,Ry,Rz], fraction of nodes evaluated).
    """
    import torch.nn.functional as F

    res = _resolution3(resolution)
    lo, hi = _bounds_arrays(bounds)
    step = (hi - lo) / (np.asarray(res) - 1)
    nc = [math.ceil((r - 1) / stride) + 1 for r in res]  # coarse nodes per axis (the last may overhang the box)
    nf = [(n - 1) * stride + 1 for n in nc]  # fine nodes of the (overhanging) working grid
    hi_c = lo + (np.asarray(nf) - 1) * step
    coarse = torch.from_numpy(evaluate_grid(field_fn, (lo, hi_c), nc, chunk_size=chunk_size, device=device))
    c5 = (coarse >= level)[None, None].float()
    cells = (F.max_pool3d(c5, 2, stride=1) != -F.max_pool3d(-c5, 2, stride=1))[0, 0]  # [nc-1]^3, corner change
    fine = F.interpolate(coarse[None, None], size=nf, mode="trilinear", align_corners=True)[0, 0].contiguous()
    flat = fine.view(-1)
    nb = [math.ceil(n / stride) for n in nf]  # node blocks per axis: block b = nodes [b*stride, (b+1)*stride)
    blocks_done = torch.zeros(nb, dtype=torch.bool)
    r = torch.arange(stride)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)  # [stride^3, 3]
    nf_t = torch.tensor(nf)
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device)
    step_t = torch.as_tensor(step, dtype=torch.float32, device=device)
    strides = torch.tensor([nf[1] * nf[2], nf[2], 1])
    checked = torch.zeros_like(cells)
    cells_shape = torch.tensor(cells.shape)
    unit = torch.eye(3, dtype=torch.long)
    r1 = torch.arange(stride + 1)
    uu, vv = (t.reshape(-1) for t in torch.meshgrid(r1, r1, indexing="ij"))
    zero = torch.zeros_like(uu)
    face_offsets = [torch.stack(o, -1) for o in ((zero, uu, vv), (uu, zero, vv), (uu, vv, zero))]
    n_eval = 0
    for _ in range(max_rounds):
        # node blocks touched by the active cells: a cell's closed node range spans blocks c and c+1 per axis
        need = torch.zeros(nb, dtype=torch.bool)
        cx, cy, cz = cells.shape
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    need[dx:dx + cx, dy:dy + cy, dz:dz + cz] |= cells
        new = need & ~blocks_done
        if not bool(new.any()):
            break
        blocks_done |= new
        ijk = (new.nonzero()[:, None, :] * stride + offsets[None]).reshape(-1, 3)
        ijk = ijk[(ijk < nf_t).all(1)]
        n_eval += ijk.shape[0]
        for i0 in range(0, ijk.shape[0], chunk_size):
            c = ijk[i0:i0 + chunk_size]
            pts = lo_t + c.to(device=device, dtype=torch.float32) * step_t
            flat[(c * strides).sum(1)] = _eval_points(field_fn, pts).cpu()
        # faces of the newly exact cells whose values straddle the level: the surface continues next door
        fresh = cells & ~checked
        checked |= fresh
        cidx = fresh.nonzero()  # [M, 3]
        for axis in range(3):
            for side in (0, 1):
                nodes = (cidx * stride)[:, None, :] + face_offsets[axis][None] + side * stride * unit[axis]
                inside = flat[(nodes * strides).sum(-1)] >= level  # [M, (stride+1)^2]
                mixed = inside.any(1) & ~inside.all(1)
                nbr = cidx[mixed] + (1 if side else -1) * unit[axis]
                ok = (nbr >= 0).all(1) & (nbr < cells_shape).all(1)
                nbr = nbr[ok]
                cells[nbr[:, 0], nbr[:, 1], nbr[:, 2]] = True
    out = fine[: res[0], : res[1], : res[2]].contiguous()
    return out.numpy(), float(n_eval + coarse.numel()) / float(np.prod(res))


# --- marching cubes and clean-up ---------------------------------------------------------------------------------

def vertex_normals(vertices: np.ndarray, faces: np.ndarray, weld: np.ndarray | None = None) -> np.ndarray:
    """Area-weighted unit vertex normals [V,3] float32 (outward for counter-clockwise-from-outside faces).
    With ``weld`` [V] (ids shared by vertices split along UV seams) split copies get the same normal."""
    v = vertices.astype(np.float64)
    f = faces.astype(np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    if weld is not None:
        weld = np.asarray(weld, np.int64)
        nw = np.zeros((int(weld.max()) + 1, 3))
        for c in range(3):
            _scatter_add(nw, weld[f[:, c]], fn)
        n = nw[weld]
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        return np.where(norm > 0, n / np.maximum(norm, 1e-30), np.array([0.0, 1.0, 0.0])).astype(np.float32)
    n = np.zeros_like(v)
    for c in range(3):
        _scatter_add(n, f[:, c], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(norm > 0, n / np.maximum(norm, 1e-30), np.array([0.0, 1.0, 0.0]))
    return n.astype(np.float32)


def _scatter_add(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    for c in range(out.shape[1]):
        out[:, c] += np.bincount(index, weights=values[:, c], minlength=out.shape[0])


def marching_cubes(grid: np.ndarray, bounds: Bounds, level: float) -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes on a larger-inside grid -> (vertices [V,3] float64 metres, faces [F,3] int64, outward winding)."""
    import mcubes

    lo, hi = _bounds_arrays(bounds)
    verts, faces = mcubes.marching_cubes(np.ascontiguousarray(grid, dtype=np.float64), float(level))
    if len(faces) == 0:
        raise EmptyFieldError("marching cubes found no surface")
    scale = (hi - lo) / (np.asarray(grid.shape) - 1)
    return verts * scale + lo, faces.astype(np.int64)


def clean_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    min_component_fraction: float = 0.05,
    max_components: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge duplicate vertices, drop degenerate/duplicate faces, keep the big components, orient outwards.

    A connected component is kept when it has at least ``min_component_fraction`` of the largest component's
    faces (and, with ``max_components``, only the largest that many). Returns (vertices float64, faces int64).
    """
    import trimesh
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = trimesh.Trimesh(vertices=vertices, faces=faces, process=True, validate=False)  # merges vertices
    m.update_faces(m.nondegenerate_faces(height=1e-12))
    m.update_faces(m.unique_faces())
    m.remove_unreferenced_vertices()
    if len(m.faces) == 0:
        raise EmptyFieldError("the mesh has no faces left after removing degenerate ones")
    f = np.asarray(m.faces)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    nv = len(m.vertices)
    graph = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(nv, nv))
    n_comp, vlabel = connected_components(graph, directed=False)
    if n_comp > 1:
        flabel = vlabel[f[:, 0]]
        sizes = np.bincount(flabel, minlength=n_comp)
        order = np.argsort(-sizes)
        keep = order[sizes[order] >= min_component_fraction * sizes[order[0]]]
        if max_components is not None:
            keep = keep[:max_components]
        m.update_faces(np.isin(flabel, keep))
        m.remove_unreferenced_vertices()
    v = np.asarray(m.vertices, dtype=np.float64)
    f = np.asarray(m.faces, dtype=np.int64)
    # marching cubes of a larger-inside field winds every surface outwards (inner walls of cavities face the cavity);
    # only a globally inverted result (a smaller-inside field) is flipped
    if np.einsum("ij,ij->", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])) < 0:
        f = f[:, ::-1].copy()
    return v, f


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int, lamb: float = 0.5,
                  mu: float = -0.53) -> np.ndarray:
    """Taubin λ|μ smoothing (uniform one-ring Laplacian, ``iterations`` pairs of steps); returns new vertices."""
    from portrait_core.export.rig import mesh_adjacency

    A = mesh_adjacency(faces, len(vertices))
    v = np.asarray(vertices, np.float64).copy()
    for _ in range(int(iterations)):
        v = v + lamb * (A @ v - v)
        v = v + mu * (A @ v - v)
    return v


def decimate_mesh(vertices: np.ndarray, faces: np.ndarray, face_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to about ``face_count`` faces (trimesh + fast-simplification); no-op if already smaller."""
    import trimesh

    if face_count >= len(faces):
        return vertices, faces
    if face_count < 4:
        raise ValueError(f"decimate target must be >= 4 faces, got {face_count}")
    m = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    d = m.simplify_quadric_decimation(face_count=int(face_count))
    d.remove_unreferenced_vertices()
    return np.asarray(d.vertices, dtype=np.float64), np.asarray(d.faces, dtype=np.int64)


@torch.no_grad()
def vertex_colors(
    color_fn: ColorFn, vertices: np.ndarray, normals: np.ndarray, *, chunk_size: int = 1 << 16,
    offset: float = 0.0,
) -> np.ndarray:
    """Colours seen by an eye on the outward normal: ``color_fn(v + offset * n, -n)`` -> [V,3] float32 in [0,1]."""
    vt = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32))
    nt = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32))
    out = []
    for s in range(0, len(vt), chunk_size):
        vs, ns = vt[s:s + chunk_size], nt[s:s + chunk_size]
        rgb = color_fn(vs + offset * ns, -ns).reshape(-1, 3).to(torch.float32)
        out.append(rgb.cpu())
    rgb = torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)
    if not np.all(np.isfinite(rgb)):
        raise ValueError("the colour field returned non-finite values")
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def extract_mesh_from_field(
    field_fn: FieldFn,
    bounds: Bounds,
    resolution: int | Sequence[int] = 128,
    level: float = 0.0,
    *,
    color_fn: ColorFn | None = None,
    decimate: int | None = None,
    min_component_fraction: float = 0.05,
    max_components: int | None = None,
    close_boundary: bool = True,
    sparse: bool | None = None,
    chunk_size: int = 1 << 18,
    device: str | torch.device = "cpu",
    smooth: int = 0,
    grid_sigma: float = 0.0,
) -> Mesh:
    """Field -> cleaned, optionally decimated and coloured mesh (metres, outward normals, uint32 faces).

    ``field_fn(points[N,3] float32 tensor) -> [N]`` is larger inside; the surface is ``field == level``.
    ``close_boundary`` marks the outermost grid nodes as outside so a body cut by the box is capped (watertight).
    An int ``resolution`` is the node count along the longest side of the box (cubic voxels); 3 ints are per axis.
    ``sparse`` (default: longest side >= 128 nodes) evaluates densely only near the surface (see ``evaluate_grid_sparse``).
    ``grid_sigma``: Gaussian blur of the grid values (in voxels) before marching cubes (0 = none).
    ``smooth``: Taubin smoothing iterations (λ = 0.5, μ = -0.53: removes the marching-cubes staircase and field
    noise without shrinking the surface) after clean-up, before decimation.
    Raises :class:`EmptyFieldError` when there is no surface (field all outside, all inside, or only tiny bits).
    """
    t0 = time.perf_counter()
    res = grid_shape(bounds, resolution)
    if sparse is None:
        sparse = max(res) >= 128
    if sparse:
        grid, evaluated = evaluate_grid_sparse(field_fn, bounds, res, level, chunk_size=chunk_size, device=device)
    else:
        grid, evaluated = evaluate_grid(field_fn, bounds, res, chunk_size=chunk_size, device=device), 1.0
    t1 = time.perf_counter()
    if not np.all(np.isfinite(grid)):
        raise ValueError(f"the field returned non-finite values at {int((~np.isfinite(grid)).sum())} grid nodes")
    interior = grid[1:-1, 1:-1, 1:-1] if close_boundary else grid
    n_in = int((interior >= level).sum())
    if n_in == 0:
        raise EmptyFieldError(
            f"the field is below level {level:g} everywhere in the box {np.asarray(bounds).tolist()}: no surface to "
            f"extract (max value {float(grid.max()):.4g}); check the level, the bounds, or the avatar"
        )
    if n_in == interior.size:
        raise EmptyFieldError(
            f"the field is at or above level {level:g} everywhere in the box {np.asarray(bounds).tolist()}: no "
            f"surface inside it (min value {float(interior.min()):.4g}); enlarge the bounds or check the level"
        )
    if grid_sigma > 0:
        from scipy.ndimage import gaussian_filter

        grid = gaussian_filter(grid, float(grid_sigma), mode="nearest")
    if close_boundary:
        outside = min(float(grid.min()), level) - 1.0
        grid[[0, -1]] = outside
        grid[:, [0, -1]] = outside
        grid[:, :, [0, -1]] = outside
    verts, faces = marching_cubes(grid, bounds, level)
    t2 = time.perf_counter()
    n_raw = len(faces)
    verts, faces = clean_mesh(verts, faces, min_component_fraction=min_component_fraction,
                              max_components=max_components)
    if smooth > 0:
        verts = taubin_smooth(verts, faces, int(smooth))
    if decimate is not None:
        verts, faces = decimate_mesh(verts, faces, int(decimate))
    t3 = time.perf_counter()
    verts32 = verts.astype(np.float32)
    faces32 = faces.astype(np.uint32)
    normals = vertex_normals(verts32, faces32)
    colors = vertex_colors(color_fn, verts32, normals) if color_fn is not None else None
    t4 = time.perf_counter()
    info = {
        "resolution": list(res), "bounds": np.asarray(bounds, dtype=float).tolist(), "level": float(level),
        "evaluated_fraction": evaluated, "raw_faces": n_raw, "faces": len(faces32), "vertices": len(verts32),
        "t_field": t1 - t0, "t_mcubes": t2 - t1, "t_clean": t3 - t2, "t_color": t4 - t3, "t_total": t4 - t0,
    }
    return Mesh(verts32, faces32, normals, colors, info)


# --- avatars -----------------------------------------------------------------------------------------------------

#: Taubin smoothing iterations of avatar meshes, and the Gaussian blur (voxels) of their occupancy grid before
#: marching cubes (see docs/export.md, "Surface").
SMOOTH_ITERATIONS = 10
GRID_SIGMA = 1.0
#: Occupancy threshold of ``Avatar.density_field`` (accumulated opacity in [0, 1]).
AVATAR_LEVEL = 0.5


#: Occupancy farther than this from the canonical body surface (metres) is dropped from avatar meshes; hair and
#: clothing stay within it. See :func:`body_distance_mask`.
MAX_BODY_DISTANCE = 0.10
#: The same limit behind the body (offsets from the nearest body vertex within 60 degrees of -Z), where 'frontal'
#: training images never look: room for hair lying on the back of the head, not for the shells' extrusion.
MAX_BODY_DISTANCE_BEHIND = 0.04


def body_distance_mask(body_vertices: np.ndarray, bounds: Bounds, max_distance: float, fade: float = 0.02,
                       grid: int = 64, max_distance_behind: float | None = None) -> Callable[[Tensor], Tensor]:
    """``mask(points [N, 3]) -> [N]``: 1 within ``max_distance`` of the nearest body vertex, falling linearly to 0
    over ``fade`` (metres), from a ``grid``^3 distance volume over ``bounds`` (trilinear; 0 outside the box).
    ``max_distance_behind`` (optional) replaces ``max_distance`` where the offset from the nearest body vertex
    points backwards (within 60 degrees of -Z, away from the frontal camera).

    Why: in 'frontal' mode a level's texel opacity applies along the whole depth of its shell, so the occupancy
    extends from the rendered front surface back to the shells' back (up to 0.3 m behind the head). The renderer
    never shows that extrusion, but a skinned mesh swings it into view when the head turns or nods."""
    from scipy.spatial import cKDTree

    lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    axes = [np.linspace(lo[k], hi[k], grid) for k in range(3)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    verts = np.asarray(body_vertices, np.float64)
    dist, nearest = cKDTree(verts).query(nodes)
    allowed = np.full(dist.shape, float(max_distance))
    if max_distance_behind is not None:
        behind = (nodes - verts[nearest])[:, 2] < -0.5 * dist  # cos(angle to -Z) > 0.5
        allowed[behind] = float(max_distance_behind)
    weight = np.clip((allowed + fade - dist) / fade, 0.0, 1.0).reshape(grid, grid, grid).astype(np.float32)
    volume = torch.from_numpy(weight).permute(2, 1, 0)[None, None].contiguous()  # [1, 1, z, y, x] for grid_sample
    lo_t, hi_t = torch.from_numpy(lo).float(), torch.from_numpy(hi).float()

    def mask(points: Tensor) -> Tensor:
        uvw = (2 * (points.float().cpu() - lo_t) / (hi_t - lo_t) - 1).reshape(1, -1, 1, 1, 3)
        m = torch.nn.functional.grid_sample(volume, uvw, mode="bilinear", padding_mode="zeros", align_corners=True)
        return m.reshape(-1).to(points)

    return mask


def avatar_bounds(avatar) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The canonical box (metres) where ``avatar.density_field`` can be non-zero.

    'frontal' textures cover ``shell_centre ± texture_half_extent`` in x and y; depth (and every axis in '360'
    mode) is bounded by the baked manifold grid / bake radius around the shell centre.
    """
    g = avatar.generator
    rc = g.cfg.render
    c = np.asarray(g.shell_centre.detach().cpu().numpy(), dtype=np.float64)
    depth = min(float(rc.bake_radius), float(rc.manifold_grid_half_extent))
    half = np.full(3, depth)
    if rc.mode == "frontal":
        half[:2] = min(float(rc.texture_half_extent), depth)
    return tuple((c - half).tolist()), tuple((c + half).tolist())  # type: ignore[return-value]


def auto_level(field_fn: FieldFn, bounds: Bounds, resolution: int = 48) -> float:
    """Half the field's maximum on a coarse grid (a threshold for fields that never reach the nominal level)."""
    top = float(evaluate_grid(field_fn, bounds, grid_shape(bounds, resolution)).max())
    if not np.isfinite(top) or top <= 0:
        raise EmptyFieldError(f"the field is nowhere positive in the box {np.asarray(bounds).tolist()} "
                              f"(max {top:.4g}): no surface to extract")
    return 0.5 * top


def _as_tensor(x, shape: tuple[int, ...], name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x, dtype=torch.float32)
    if t.numel() != int(np.prod(shape)):
        raise ValueError(f"{name} must have {int(np.prod(shape))} values (shape {shape}), got {tuple(t.shape)}")
    return t.reshape(shape)


@torch.no_grad()
def extract_mesh(
    avatar,
    resolution: int = 256,
    pose=None,
    expression=None,
    decimate: int | None = None,
    *,
    level: float | str = AVATAR_LEVEL,
    bounds: Bounds | None = None,
    colors: bool = True,
    posed_from: str = "lbs",
    color_samples: int | None = 4,
    max_body_distance: float | None = MAX_BODY_DISTANCE,
    max_body_distance_behind: float | None = MAX_BODY_DISTANCE_BEHIND,
    smooth: int = SMOOTH_ITERATIONS,
    grid_sigma: float = GRID_SIGMA,
    texture: int | None = None,
    texture_views: Sequence[tuple[float, float]] | None = None,
    **kw,
) -> Mesh:
    """Mesh of an ``Avatar`` (portrait_core.generator) in metres, outward normals, sRGB vertex colours.

    Canonical pose and neutral expression by default: marching cubes of ``avatar.density_field`` (occupancy,
    threshold ``level`` = 0.5; ``"auto"`` = half the field's maximum, for untrained generators whose opacity never
    reaches 0.5) over :func:`avatar_bounds` (or ``bounds``); ``resolution`` nodes along the box's
    longest side. Colours: ``avatar.color_field`` looking at each vertex against its outward normal.

    With ``pose`` [6,3] (axis-angle, canonical-relative) and/or ``expression`` [64]:
    - ``posed_from="lbs"`` (default): the canonical mesh is deformed, so topology and colours are shared with
      the canonical export: expression by ``avatar.expression_displacement`` (forward solve of the generator's
      backward expression offsets), then pose by the body's forward LBS (``BodyModel.forward_lbs``: the blended
      transform of the nearest upper-body vertex, the forward counterpart of the generator's inverse LBS).
    - ``posed_from="field"``: marching cubes of the observed-space field ``density_field(x, pose, expression)``
      (the generator's own deformation including its smoothing); colours from the canonical correspondences.
    ``color_samples``: samples per colour ray passed to ``color_field`` (None = its default).
    ``max_body_distance``: occupancy farther than this (metres, canonical) from the avatar's canonical body surface
    is removed (:func:`body_distance_mask`), and farther than ``max_body_distance_behind`` behind it (None: the same
    limit all round); ``max_body_distance=None`` keeps everything.
    ``smooth``, ``grid_sigma``: Taubin smoothing iterations of the surface and Gaussian blur (voxels) of the
    occupancy grid before marching cubes (see :func:`extract_mesh_from_field`).
    ``texture``: a texture size (power of two, e.g. 1024) UV-unwraps the canonical mesh and bakes a colour texture
    from the avatar's neural renders (``portrait_core.export.texture.bake_texture``, ``texture_views`` (yaw, pitch)
    camera offsets); the result is split along UV seams (``Mesh.uvs``, ``texture``, ``weld``).
    Other keyword arguments go to :func:`extract_mesh_from_field`.
    """
    if posed_from not in ("lbs", "field"):
        raise ValueError(f"posed_from must be 'lbs' or 'field', got {posed_from!r}")
    pose_t = None if pose is None else _as_tensor(pose, (6, 3), "pose")
    expr_t = None if expression is None else _as_tensor(expression, (64,), "expression")
    if bounds is None:
        bounds = avatar_bounds(avatar)
    if level == "auto":
        level = auto_level(lambda p: avatar.density_field(p), bounds)
    from_field = posed_from == "field" and (pose_t is not None or expr_t is not None)
    fp, fe = (pose_t, expr_t) if from_field else (None, None)
    color_kw = {} if color_samples is None else {"samples": int(color_samples)}

    near_body = None
    if max_body_distance is not None:
        body_vertices = avatar.generator.body.canonical(avatar.body_shape.detach().cpu().float()).vertices[0]
        near_body = body_distance_mask(body_vertices.numpy(), bounds, max_body_distance,
                                       max_distance_behind=max_body_distance_behind)

    def density(p: Tensor) -> Tensor:
        occupancy = avatar.density_field(p, fp, fe)
        if near_body is None:
            return occupancy
        return occupancy * near_body(avatar.to_canonical(p, fp, fe) if from_field else p)

    def color(p: Tensor, view_dirs: Tensor) -> Tensor:
        n = -view_dirs
        if from_field:  # observed -> canonical points and normals
            eps = 2e-3
            pc = avatar.to_canonical(p, fp, fe)
            n = avatar.to_canonical(p + eps * n, fp, fe) - pc
            p = pc
        return avatar.color_field(p, n, **color_kw)

    mesh = extract_mesh_from_field(density, bounds, resolution, level, color_fn=color if colors else None,
                                   decimate=decimate, smooth=smooth, grid_sigma=grid_sigma, **kw)
    mesh.info.update({"pose": None if pose_t is None else pose_t.tolist(),
                      "expression": None if expr_t is None else expr_t.tolist(), "posed_from": posed_from,
                      "smooth": int(smooth), "grid_sigma": float(grid_sigma)})
    if texture is not None and not from_field:
        from portrait_core.export.texture import DEFAULT_VIEWS, bake_texture, check_texture_size

        layout, image, tinfo = bake_texture(avatar, mesh.vertices, mesh.faces, mesh.normals, mesh.colors,
                                            size=check_texture_size(texture),
                                            views=DEFAULT_VIEWS if texture_views is None else texture_views)
        mesh = mesh.split(layout.vmap, layout.faces, layout.uvs, image)
        mesh.info.update({"texture": tinfo, "vertices": mesh.num_vertices})
        mesh.info["t_texture"] = sum(v for k, v in tinfo.items() if k.startswith("t_"))
    if from_field or (pose_t is None and expr_t is None):
        return mesh
    t0 = time.perf_counter()
    v = torch.from_numpy(mesh.vertices.copy())
    if expr_t is not None:
        v = v + avatar.expression_displacement(v, expr_t).to(v)
    if pose_t is not None:
        body = avatar.generator.body
        state = body.posed(avatar.body_shape.detach().cpu().float(), pose_t[None])
        T = body.forward_lbs(state, v[None])[0]
        v = (T[:, :3, :3] @ v[:, :, None])[:, :, 0] + T[:, :3, 3]
    out = mesh.with_vertices(v.cpu().numpy())
    out.info["t_deform"] = time.perf_counter() - t0
    return out
