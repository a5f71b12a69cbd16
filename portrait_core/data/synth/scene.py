"""The Blender side of the synthetic renderer: a fixed-topology studio scene driven from numpy.

Everything here takes positions in the **SMPL world** (+Y up, subject faces +Z, metres) and converts them to
Blender (Z-up) with ``C = Rx(+90 deg)``: ``p_B = C p_S``. Cameras come as OpenCV cam2world matrices in the SMPL
world and are set as ``matrix_world = W^-1 . c2w_cv . diag(1, -1, -1, 1)`` with ``W = diag(C^T, 1)``; the lens
follows the normalised focal (``lens = fx * sensor_width`` on a horizontal-fit sensor, principal point shifts
from (cx, cy)). Renders are Cycles on the CPU (few samples, no denoising), 'Standard' view transform, transparent
film, returned as straight-alpha sRGB uint8 RGBA arrays.

Only this folder imports bpy (see tests/test_import_direction.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import bpy  # noqa: E402  (the renderer's process owns the Blender singleton)
import numpy as np

#: SMPL world -> Blender world rotation (x, y, z) -> (x, -z, y)
C_SMPL_TO_BLENDER = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
_F_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
SENSOR_WIDTH_MM = 36.0


def blender_camera_matrix(cam2world_cv: np.ndarray) -> np.ndarray:
    """OpenCV cam2world (SMPL world) [4,4] -> Blender camera ``matrix_world`` [4,4]."""
    w_inv = np.eye(4)
    w_inv[:3, :3] = C_SMPL_TO_BLENDER
    return w_inv @ np.asarray(cam2world_cv, dtype=np.float64) @ _F_CV_TO_GL


def lens_from_intrinsics(intrinsics: np.ndarray) -> tuple[float, float, float]:
    """Normalised intrinsics [3,3] -> (lens mm on a 36 mm horizontal sensor, shift_x, shift_y) for square images."""
    k = np.asarray(intrinsics, dtype=np.float64)
    if abs(k[0, 0] - k[1, 1]) > 1e-6 * k[0, 0]:
        raise ValueError(f"non-square pixels (fx={k[0, 0]}, fy={k[1, 1]}) are not supported by the renderer")
    return float(k[0, 0] * SENSOR_WIDTH_MM), float(0.5 - k[0, 2]), float(k[1, 2] - 0.5)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (Blender colour attributes and node colours are linear)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


class StudioScene:
    """One Blender scene with named fixed-topology meshes, a camera with parented studio lights, and a renderer.

    ``add_mesh`` creates an object once (faces fixed); ``set_mesh`` rewrites its vertices (SMPL world metres) and
    optionally its colour and attributes; ``render`` returns uint8 RGBA [H, W, 4] (straight alpha).
    """

    def __init__(self, samples: int = 4, threads: int = 1, seed: int = 0, quiet: bool = True):
        self.quiet = quiet
        os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="busto-blender-user-"))
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self.scene = sc = bpy.context.scene
        sc.render.engine = "CYCLES"
        sc.cycles.device = "CPU"
        sc.cycles.samples = int(samples)
        sc.cycles.use_denoising = False
        sc.cycles.use_adaptive_sampling = False
        sc.cycles.seed = int(seed)
        # direct light only: bounces cost time and add noise at a few samples per pixel
        sc.cycles.max_bounces = 0
        sc.cycles.diffuse_bounces = 0
        sc.cycles.glossy_bounces = 0
        sc.cycles.transmission_bounces = 0
        sc.cycles.volume_bounces = 0
        sc.cycles.transparent_max_bounces = 2
        sc.cycles.caustics_reflective = False
        sc.cycles.caustics_refractive = False
        sc.cycles.pixel_filter_type = "BLACKMAN_HARRIS"
        sc.cycles.filter_width = 1.5
        sc.render.threads_mode = "FIXED"
        sc.render.threads = max(1, int(threads))
        sc.render.film_transparent = True
        sc.render.resolution_percentage = 100
        sc.view_settings.view_transform = "Standard"
        sc.view_settings.look = "None"
        sc.render.image_settings.file_format = "PNG"
        sc.render.image_settings.color_mode = "RGBA"
        sc.render.image_settings.color_depth = "8"
        sc.render.image_settings.compression = 0
        sc.render.use_persistent_data = True
        # soft grey studio ambient; the background itself is transparent (white is composited later)
        world = bpy.data.worlds.new("studio")
        world.use_nodes = True
        bg = world.node_tree.nodes.get("Background")
        bg.inputs["Color"].default_value = (0.55, 0.55, 0.58, 1.0)
        bg.inputs["Strength"].default_value = 0.3
        sc.world = world
        cam = bpy.data.cameras.new("camera")
        cam.sensor_fit = "HORIZONTAL"
        cam.sensor_width = SENSOR_WIDTH_MM
        cam.clip_start = 0.05
        cam.clip_end = 100.0
        self.camera = bpy.data.objects.new("camera", cam)
        sc.collection.objects.link(self.camera)
        sc.camera = self.camera
        self._lights()
        self.objects: dict[str, bpy.types.Object] = {}
        self.materials: dict[str, bpy.types.Material] = {}
        self._tmp = tempfile.mkdtemp(prefix="busto-synth-")

    def _lights(self) -> None:
        """Key, fill and rim suns parented to the camera (studio lights move with the photographer)."""
        spec = [  # name, strength, angle (rad, softness), shadows, rotation (camera-local XYZ Euler; camera looks -Z)
            ("key", 3.2, 0.1, True, (0.45, -0.55, 0.0)),
            ("fill", 1.1, 0.0, False, (0.2, 0.7, 0.0)),
            ("rim", 1.5, 0.0, True, (2.6, 0.3, 0.0)),
        ]
        for name, strength, angle, shadow, rot in spec:
            light = bpy.data.lights.new(name, "SUN")
            light.energy = strength
            light.angle = angle
            light.use_shadow = shadow
            ob = bpy.data.objects.new(name, light)
            ob.parent = self.camera
            ob.rotation_euler = rot
            self.scene.collection.objects.link(ob)

    # --- materials ---------------------------------------------------------------------------------------

    def material(self, name: str, roughness: float = 0.6, pattern: bool = False, streaks: bool = False,
                 specular: float = 0.3, sheen: float = 0.0, hideable: bool = False) -> bpy.types.Material:
        """A Principled material whose base colour is the 'Col' colour attribute.

        ``pattern``: a garment where the per-vertex 'cloth' attribute exceeds 0.5: colour 'cloth_rgb' mixed with
        'pattern_rgb' by a procedural stripe/check mask evaluated on the per-vertex canonical position attribute
        'canon' (so the pattern follows the pose). Parameters live in Value nodes: 'stripes', 'checks', 'freq', and the
        stripe direction vector in 'dir'. ``streaks``: a stretched noise along 'canon' darkens strands of hair.
        ``hideable``: the per-vertex 'hide' attribute (0..1) mixes in a transparent shader (used to hide the body's
        head where the 3DMM face covers it).
        """
        mat = bpy.data.materials.new(name)
        mat.use_nodes = True
        nt = mat.node_tree
        bsdf = nt.nodes.get("Principled BSDF")
        bsdf.inputs["Roughness"].default_value = roughness
        if "Specular IOR Level" in bsdf.inputs:
            bsdf.inputs["Specular IOR Level"].default_value = specular
        if sheen and "Sheen Weight" in bsdf.inputs:
            bsdf.inputs["Sheen Weight"].default_value = sheen
        col = nt.nodes.new("ShaderNodeVertexColor")
        col.layer_name = "Col"
        base = col.outputs["Color"]
        if pattern or streaks:
            canon = nt.nodes.new("ShaderNodeAttribute")
            canon.attribute_type = "GEOMETRY"
            canon.attribute_name = "canon"
        if pattern:
            base = self._pattern_nodes(nt, canon, base)
        if streaks:
            mapping = nt.nodes.new("ShaderNodeMapping")
            mapping.inputs["Scale"].default_value = (60.0, 9.0, 60.0)
            nt.links.new(canon.outputs["Vector"], mapping.inputs["Vector"])
            noise = nt.nodes.new("ShaderNodeTexNoise")
            noise.inputs["Scale"].default_value = 3.0
            noise.inputs["Detail"].default_value = 2.0
            nt.links.new(mapping.outputs["Vector"], noise.inputs["Vector"])
            ramp = nt.nodes.new("ShaderNodeMapRange")
            ramp.inputs["To Min"].default_value = 0.7
            ramp.inputs["To Max"].default_value = 1.25
            nt.links.new(noise.outputs["Fac"], ramp.inputs["Value"])
            mul = nt.nodes.new("ShaderNodeMix")
            mul.data_type = "RGBA"
            mul.blend_type = "MULTIPLY"
            mul.inputs["Factor"].default_value = 1.0
            nt.links.new(base, mul.inputs["A"])
            nt.links.new(ramp.outputs["Result"], mul.inputs["B"])
            base = mul.outputs["Result"]
        nt.links.new(base, bsdf.inputs["Base Color"])
        if hideable:
            out = nt.nodes.get("Material Output")
            hide = nt.nodes.new("ShaderNodeAttribute")
            hide.attribute_type = "GEOMETRY"
            hide.attribute_name = "hide"
            clear = nt.nodes.new("ShaderNodeBsdfTransparent")
            mix = nt.nodes.new("ShaderNodeMixShader")
            nt.links.new(hide.outputs["Fac"], mix.inputs["Fac"])
            nt.links.new(bsdf.outputs["BSDF"], mix.inputs[1])
            nt.links.new(clear.outputs["BSDF"], mix.inputs[2])
            nt.links.new(mix.outputs["Shader"], out.inputs["Surface"])
        self.materials[name] = mat
        return mat

    @staticmethod
    def _pattern_nodes(nt, canon, base):
        def value(name, v):
            n = nt.nodes.new("ShaderNodeValue")
            n.name = name
            n.outputs[0].default_value = v
            return n.outputs[0]

        def math(op, a, b=None):
            n = nt.nodes.new("ShaderNodeMath")
            n.operation = op
            for k, x in enumerate((a, b)):
                if x is None:
                    continue
                if isinstance(x, (int, float)):
                    n.inputs[k].default_value = x
                else:
                    nt.links.new(x, n.inputs[k])
            return n.outputs[0]

        freq = value("freq", 12.0)
        direction = nt.nodes.new("ShaderNodeCombineXYZ")
        direction.name = "dir"
        direction.inputs[1].default_value = 1.0
        dot = nt.nodes.new("ShaderNodeVectorMath")
        dot.operation = "DOT_PRODUCT"
        nt.links.new(canon.outputs["Vector"], dot.inputs[0])
        nt.links.new(direction.outputs[0], dot.inputs[1])
        stripe = math("LESS_THAN", math("FRACT", math("MULTIPLY", dot.outputs["Value"], freq)), 0.5)
        sep = nt.nodes.new("ShaderNodeSeparateXYZ")
        nt.links.new(canon.outputs["Vector"], sep.inputs[0])
        cx = math("LESS_THAN", math("FRACT", math("MULTIPLY", sep.outputs[0], freq)), 0.5)
        cy = math("LESS_THAN", math("FRACT", math("MULTIPLY", sep.outputs[1], freq)), 0.5)
        check = math("ABSOLUTE", math("SUBTRACT", cx, cy))
        mask = math("ADD", math("MULTIPLY", stripe, value("stripes", 0.0)), math("MULTIPLY", check, value("checks", 0.0)))
        # 'cloth' is a soft per-vertex value (0.5 on the garment's edge); its interpolated 0.5 level set gives a
        # smooth, sharp edge across the (coarse) body triangles
        cloth = nt.nodes.new("ShaderNodeAttribute")
        cloth.attribute_type = "GEOMETRY"
        cloth.attribute_name = "cloth"
        edge = nt.nodes.new("ShaderNodeMapRange")
        edge.inputs["From Min"].default_value = 0.46
        edge.inputs["From Max"].default_value = 0.54
        edge.clamp = True
        nt.links.new(cloth.outputs["Fac"], edge.inputs["Value"])

        def mix_rgb(fac, a, b):
            m = nt.nodes.new("ShaderNodeMix")
            m.data_type = "RGBA"
            nt.links.new(fac, m.inputs["Factor"])
            nt.links.new(a, m.inputs["A"])
            nt.links.new(b, m.inputs["B"])
            return m.outputs["Result"]

        cloth_rgb = nt.nodes.new("ShaderNodeRGB")
        cloth_rgb.name = "cloth_rgb"
        pattern_rgb = nt.nodes.new("ShaderNodeRGB")
        pattern_rgb.name = "pattern_rgb"
        garment = mix_rgb(mask, cloth_rgb.outputs[0], pattern_rgb.outputs[0])
        return mix_rgb(edge.outputs["Result"], base, garment)

    def set_pattern(self, material: str, *, stripes: float, checks: float, freq: float,
                    direction: tuple[float, float, float], color_srgb: tuple[float, float, float],
                    cloth_srgb: tuple[float, float, float]) -> None:
        """Set the garment colour and its procedural pattern (see :meth:`material`); ``freq`` in cycles per metre."""
        nodes = self.materials[material].node_tree.nodes
        nodes["stripes"].outputs[0].default_value = float(stripes)
        nodes["checks"].outputs[0].default_value = float(checks)
        nodes["freq"].outputs[0].default_value = float(freq)
        for k in range(3):
            nodes["dir"].inputs[k].default_value = float(direction[k])
        lin = srgb_to_linear(np.asarray(color_srgb))
        nodes["pattern_rgb"].outputs[0].default_value = (*lin.tolist(), 1.0)
        lin = srgb_to_linear(np.asarray(cloth_srgb))
        nodes["cloth_rgb"].outputs[0].default_value = (*lin.tolist(), 1.0)

    # --- meshes ------------------------------------------------------------------------------------------

    def add_mesh(self, name: str, vertices: np.ndarray, faces: np.ndarray, material: str,
                 smooth: bool = True, attributes: tuple[tuple[str, str], ...] = ()) -> None:
        """Create object ``name`` with fixed triangle topology; ``attributes`` = ((name, 'FLOAT'|'FLOAT_VECTOR'),)."""
        v = np.asarray(vertices, dtype=np.float64) @ C_SMPL_TO_BLENDER.T
        f = np.asarray(faces, dtype=np.int64)
        me = bpy.data.meshes.new(name)
        me.vertices.add(len(v))
        me.vertices.foreach_set("co", v.astype(np.float32).ravel())
        me.loops.add(3 * len(f))
        me.loops.foreach_set("vertex_index", f.astype(np.int32).ravel())
        me.polygons.add(len(f))
        me.polygons.foreach_set("loop_start", np.arange(0, 3 * len(f), 3, dtype=np.int32))
        me.polygons.foreach_set("use_smooth", np.full(len(f), smooth, dtype=bool))
        me.update(calc_edges=True)
        ca = me.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
        me.color_attributes.active_color = ca
        for attr, kind in attributes:
            me.attributes.new(attr, kind, "POINT")
        me.materials.append(self.materials[material])
        ob = bpy.data.objects.new(name, me)
        self.scene.collection.objects.link(ob)
        self.objects[name] = ob

    def set_mesh(self, name: str, vertices: np.ndarray | None = None, colors_srgb: np.ndarray | None = None,
                 attributes: dict[str, np.ndarray] | None = None) -> None:
        """Rewrite vertex positions (SMPL world, metres, [V,3]), colours (sRGB [V,3] in [0,1]) and attributes."""
        me = self.objects[name].data
        if vertices is not None:
            v = np.asarray(vertices, dtype=np.float64) @ C_SMPL_TO_BLENDER.T
            if v.shape != (len(me.vertices), 3):
                raise ValueError(f"mesh {name!r}: expected {len(me.vertices)} vertices, got {v.shape}")
            me.vertices.foreach_set("co", v.astype(np.float32).ravel())
        if colors_srgb is not None:
            rgba = np.ones((len(me.vertices), 4), dtype=np.float32)
            rgba[:, :3] = srgb_to_linear(np.clip(colors_srgb, 0, 1))
            me.color_attributes["Col"].data.foreach_set("color", rgba.ravel())
        for attr, values in (attributes or {}).items():
            values = np.asarray(values, dtype=np.float32)
            key = "vector" if values.ndim == 2 else "value"
            me.attributes[attr].data.foreach_set(key, values.ravel())
        me.update()

    def add_markers(self, colors_srgb: list[tuple[float, float, float]], segments: int = 12) -> None:
        """Unit spheres ``marker_k`` with flat emission colours (for checking projections in tests)."""
        th, ph = np.meshgrid(np.linspace(0, np.pi, segments), np.linspace(0, 2 * np.pi, 2 * segments, endpoint=False),
                             indexing="ij")
        v = np.stack([np.sin(th) * np.cos(ph), np.cos(th), np.sin(th) * np.sin(ph)], -1).reshape(-1, 3)
        cols = 2 * segments
        f = []
        for i in range(segments - 1):
            for j in range(cols):
                a, b, c, d = i * cols + j, i * cols + (j + 1) % cols, (i + 1) * cols + (j + 1) % cols, (i + 1) * cols + j
                f += [(a, c, b), (a, d, c)]
        self._marker_unit = v
        for k, rgb in enumerate(colors_srgb):
            mat = bpy.data.materials.new(f"marker_{k}")
            mat.use_nodes = True
            nt = mat.node_tree
            out = nt.nodes.get("Material Output")
            for n in list(nt.nodes):
                if n != out:
                    nt.nodes.remove(n)
            em = nt.nodes.new("ShaderNodeEmission")
            em.inputs["Color"].default_value = (*srgb_to_linear(np.asarray(rgb)).tolist(), 1.0)
            em.inputs["Strength"].default_value = 1.0
            nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
            self.materials[f"marker_{k}"] = mat
            self.add_mesh(f"marker_{k}", v, np.asarray(f), f"marker_{k}")
            self.objects[f"marker_{k}"].visible_shadow = False
            self.set_visible(f"marker_{k}", False)

    def set_markers(self, centres: np.ndarray | None, radius: float = 0.003) -> None:
        """Show marker k at ``centres[k]`` (SMPL world, metres) with ``radius``; None hides all markers."""
        k = 0
        while f"marker_{k}" in self.objects:
            show = centres is not None and k < len(centres)
            self.set_visible(f"marker_{k}", show)
            if show:
                self.set_mesh(f"marker_{k}", vertices=self._marker_unit * radius + np.asarray(centres[k])[None])
            k += 1

    def set_visible(self, name: str, visible: bool) -> None:
        ob = self.objects[name]
        ob.hide_render = not visible

    # --- camera and rendering ----------------------------------------------------------------------------

    def set_camera(self, cam2world_cv: np.ndarray, intrinsics: np.ndarray) -> None:
        """Place the Blender camera from an OpenCV cam2world (SMPL world) and normalised intrinsics."""
        from mathutils import Matrix

        self.camera.matrix_world = Matrix(blender_camera_matrix(cam2world_cv).tolist())
        lens, sx, sy = lens_from_intrinsics(intrinsics)
        self.camera.data.lens = lens
        self.camera.data.shift_x = sx
        self.camera.data.shift_y = sy

    def render(self, resolution: int) -> np.ndarray:
        """Render the current state at ``resolution``² -> uint8 RGBA [H, W, 4] (sRGB, straight alpha)."""
        from PIL import Image

        sc = self.scene
        sc.render.resolution_x = sc.render.resolution_y = int(resolution)
        path = os.path.join(self._tmp, "frame.png")
        sc.render.filepath = path
        with _quiet_stdout(self.quiet):
            bpy.ops.render.render(write_still=True)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA")).copy()


@contextlib.contextmanager
def _quiet_stdout(enabled: bool = True):
    """Silence Blender's C-level render log ('Fra:...', 'Saved:...') by pointing fd 1 at /dev/null."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def composite_white(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Straight-alpha uint8 RGBA -> (RGB uint8 over white, alpha uint8)."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), rgba[..., 3].copy()
