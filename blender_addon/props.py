"""Property groups: per-avatar parameters and expression controls on the rig object, scene render settings,
and transient job state on the window manager."""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import (
    BoolProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import constants as K

#: checkpoint paths may be stored relative to the .blend ("//..."); Blender 4.5+ wants that declared
_PATH_OPTIONS = {"ANIMATABLE", "PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else {"ANIMATABLE"}


def _tag_owner(self, _context) -> None:
    """Re-evaluate what depends on the rig (the mesh's expression shape-key drivers) after an edit."""
    self.id_data.update_tag()


class BustoAvatarProps(bpy.types.PropertyGroup):
    """One avatar: stored on its armature object (``ob.busto``), so it survives save/reload and several avatars
    can coexist. The expression fields are animatable; the effective expression is ``expression`` plus each named
    slider added to its component (see :func:`effective_expression`)."""

    is_avatar: BoolProperty(name="Is Busto avatar", default=False, options={"HIDDEN"})
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed of the identity and appearance latents")
    truncation: FloatProperty(name="Truncation", default=0.7, min=0.0, max=1.0,
                              description="Truncation ψ: 0 = the average avatar, 1 = the full latent distribution")
    full_360: BoolProperty(name="360°", default=False,
                           description="Preview the avatar all around (needs a checkpoint trained in 360° mode "
                                       "for the back to be meaningful)")
    model_mode: StringProperty(name="Model mode", default="", options={"HIDDEN"},
                               description="Render mode of the checkpoint the avatar was sampled from ('frontal' "
                                           "or '360'; empty: not known yet)")
    body_shape: FloatVectorProperty(name="Body shape", size=K.BODY_SHAPE_DIM, default=(0.0,) * K.BODY_SHAPE_DIM,
                                    min=-5.0, max=5.0, description="SMPL betas of the avatar's body")
    checkpoint: StringProperty(name="Checkpoint", subtype="FILE_PATH", default="", options=_PATH_OPTIONS,
                               description="Checkpoint the avatar was sampled from (empty: the scene's model)")
    mesh: PointerProperty(name="Mesh", type=bpy.types.Object, description="Extracted mesh bound to this rig")
    preview: PointerProperty(name="Preview", type=bpy.types.Image, description="Preview thumbnail")
    face_preview: PointerProperty(name="Face preview", type=bpy.types.Image,
                                  description="Last face-camera preview (Render > Face Preview)")
    # 8 x 8 because Blender caps a dimension at 32; F-curve array_index 0..63 is the flat component index
    expression: FloatVectorProperty(name="Expression", size=(8, 8), default=((0.0,) * 8,) * 8,
                                    min=-10.0, max=10.0, soft_min=-3.0, soft_max=3.0, options={"ANIMATABLE"},
                                    update=_tag_owner,
                                    description="The full 64-component 3DMM expression vector (BFM09 layout)")
    show_full_expression: BoolProperty(name="All 64 components", default=False)

    # named sliders, each added to its expression component (created below from constants.EXPRESSION_SLIDERS)
    __annotations__.update({
        f"exp_{name}": FloatProperty(name=name.replace("_", " ").title(), default=0.0, soft_min=-3.0, soft_max=3.0,
                                     min=-10.0, max=10.0, options={"ANIMATABLE"}, update=_tag_owner,
                                     description=f"Added to expression component {index}")
        for name, index in K.EXPRESSION_SLIDERS.items()
    })


def effective_expression(props) -> np.ndarray:
    """The 64-vector the generator sees: ``props.expression`` plus the named sliders on their components."""
    e = np.zeros(K.EXPRESSION_DIM, np.float32)
    props.expression.foreach_get(e)
    e = e.astype(np.float64)
    for name, index in K.EXPRESSION_SLIDERS.items():
        e[index] += getattr(props, f"exp_{name}")
    return e


def set_expression(props, values) -> None:
    props.expression.foreach_set(np.asarray(values, np.float32).reshape(K.EXPRESSION_DIM))
    props.id_data.update_tag()  # foreach_set bypasses the update callback


class BustoSceneProps(bpy.types.PropertyGroup):
    """Scene-wide settings (saved in the .blend): the model used by this scene and the engine's options."""

    checkpoint: StringProperty(name="Checkpoint", subtype="FILE_PATH", default="", options=_PATH_OPTIONS,
                               description="Generator checkpoint for this scene (empty: the add-on preference)")
    super_resolve: BoolProperty(name="Super-resolution", default=True,
                                description="Render through the manifold super-resolution network "
                                            "(off: the low-resolution ray image, upscaled)")
    transparent_background: BoolProperty(name="Use alpha", default=False,
                                         description="Write the generator's alpha (else the white background)")
    # sampling / extraction options shown in the panel
    new_seed: IntProperty(name="Seed", default=0, min=0)
    new_truncation: FloatProperty(name="Truncation", default=0.7, min=0.0, max=1.0)
    new_full_360: BoolProperty(name="360°", default=False)
    mesh_resolution: IntProperty(name="Resolution", default=128, min=16, max=512,
                                 description="Marching-cubes grid size along each axis")
    mesh_decimate: IntProperty(name="Max faces", default=0, min=0,
                               description="Decimate to at most this many triangles (0: keep all)")
    mesh_colors: BoolProperty(name="Vertex colours", default=True)
    mesh_morphs: IntProperty(name="Expression morphs", default=8, min=0, max=64,
                             description="Shape keys for the leading expression components, driven by the rig's "
                                         "expression controls (0: none)")
    mesh_auto_level: BoolProperty(name="Automatic threshold", default=False,
                                  description="Half of the avatar's peak occupancy instead of the fixed threshold "
                                              "(for untrained or weak models)")
    mesh_level: FloatProperty(name="Density threshold", default=0.5, min=0.001, max=0.999,
                              description="Occupancy level of the surface (0.5 for a trained model; an untrained "
                                          "model needs a lower value)")
    anim_start: IntProperty(name="Start", default=1, description="First frame of imported keyframes / presets")
    anim_interval: IntProperty(name="Frames per key", default=12, min=1,
                               description="Frames between consecutive keyframes (the official n_interval)")
    anim_amplitude: FloatProperty(name="Amplitude", default=1.0, min=0.0, max=3.0)
    orbit_frames: IntProperty(name="Orbit frames", default=120, min=2, max=100000,
                              description="Frames of one full turn of the orbit camera (from the Start frame)")
    orbit_elevation: FloatProperty(name="Elevation", default=0.0, min=-1.4, max=1.4, subtype="ANGLE",
                                   description="Orbit camera height angle above the portrait centre (0: level)")


class BustoRuntimeProps(bpy.types.PropertyGroup):
    """Transient state (window manager, never saved): background job progress and the model status line."""

    job_running: BoolProperty(default=False)
    job_label: StringProperty(default="")
    job_progress: FloatProperty(name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, default=0.0)
    model_status: StringProperty(default="")
    model_device: StringProperty(default="")
    model_mode: StringProperty(default="")


CLASSES = (BustoAvatarProps, BustoSceneProps, BustoRuntimeProps)

#: (bpy type, attribute, property group, saved in the .blend)
POINTERS = (
    (bpy.types.Object, "busto", BustoAvatarProps),
    (bpy.types.Scene, "busto", BustoSceneProps),
    (bpy.types.WindowManager, "busto", BustoRuntimeProps),
)


def register_pointers():
    for owner, attr, group in POINTERS:
        setattr(owner, attr, PointerProperty(type=group))


def unregister_pointers():
    for owner, attr, _ in reversed(POINTERS):
        if hasattr(owner, attr):
            delattr(owner, attr)
