"""Generator checkpoints: ONE ``.safetensors`` file (tensors + string metadata), never pickled code.

Metadata: ``format = "busto-generator"``, ``format_version = "1"``, ``config`` (JSON of the GeneratorConfig),
``info`` (free-form JSON). Writes are atomic (``portrait_core.atomic``: temporary file in the same folder,
fsync, the umask's permissions, ``os.replace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from portrait_core.atomic import atomic_path

from .config import config_from_json, config_to_json

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "save_generator", "load_generator", "read_metadata",
           "resolve_generator_file", "silence_noise_dims", "transfer_weights"]

FORMAT = "busto-generator"
FORMAT_VERSION = "1"
#: The generator file inside a training checkpoint folder (train/checkpoint.py writes it).
TRAINING_GENERATOR_FILE = "generator.safetensors"


class CheckpointError(ValueError):
    """A generator checkpoint is missing, unreadable, of another format/version, or does not match its config."""


def save_generator(path: str | os.PathLike, generator, info: dict[str, Any] | None = None) -> Path:
    """Write ``generator``'s state dict and config to ``path`` (a ``.safetensors`` file), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        info_json = json.dumps(info or {})
    except TypeError as e:
        raise TypeError(f"save_generator: info must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in generator.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_to_json(generator.cfg),
                "info": info_json}
    with atomic_path(path) as tmp:  # readable as the umask allows (mkstemp alone makes 0600 files)
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def resolve_generator_file(path: str | os.PathLike) -> Path:
    """A generator ``.safetensors`` file, or a training checkpoint folder / checkpoints folder / run folder ->
    the generator file: ``<folder>/generator.safetensors``, else the one of the checkpoint the ``latest`` pointer
    names, else that of the newest ``step-*`` folder (under ``<folder>`` or ``<folder>/checkpoints``)."""
    p = Path(path)
    if not p.is_dir():
        return p
    if (p / TRAINING_GENERATOR_FILE).is_file():
        return p / TRAINING_GENERATOR_FILE
    for root in (p / "checkpoints", p):
        pointer = root / "latest"
        if pointer.is_file():
            try:  # a damaged pointer falls back to the newest step-* folder
                candidate = root / pointer.read_text(encoding="utf-8").strip() / TRAINING_GENERATOR_FILE
            except (OSError, UnicodeDecodeError, ValueError):
                candidate = None
            if candidate is not None and candidate.is_file():
                return candidate
        steps = sorted(d for d in root.glob("step-*") if (d / TRAINING_GENERATOR_FILE).is_file())
        if steps:
            return steps[-1] / TRAINING_GENERATOR_FILE
    raise CheckpointError(f"{p}: folder holds no generator checkpoint (expected {TRAINING_GENERATOR_FILE} in it, "
                          f"or a training run / checkpoints folder with step-* checkpoints)")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a generator checkpoint (validated format tag and version)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
    fmt = metadata.get("format")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: metadata 'format' is {fmt!r}, expected {FORMAT!r} (not a Busto generator "
                              f"checkpoint)")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {version!r}; this Busto reads version "
                              f"{FORMAT_VERSION!r}")
    for key in ("config", "info"):
        if key not in metadata:
            raise CheckpointError(f"{path}: metadata has no {key!r} entry")
    return metadata


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", body=None, face=None):
    """Rebuild the Generator from its config and load its tensors (strict: every key and shape must match).

    ``path`` is a generator ``.safetensors`` file or a training checkpoint/run folder (see
    :func:`resolve_generator_file`). ``body``/``face`` optionally replace the synthetic body/face models (they are not stored in the file).
    The checkpoint's ``info`` dict is attached as ``generator.checkpoint_info``.
    """
    from safetensors.torch import load_file

    from .generator import Generator

    path = resolve_generator_file(path)
    metadata = read_metadata(path)
    try:
        cfg = config_from_json(metadata["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid generator config in metadata: {e}") from e
    try:
        info = json.loads(metadata["info"])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: metadata 'info' is not valid JSON: {e}") from e
    # Before anything is allocated: the config's sizes are within SIZE_LIMITS (config_from_json), and the tensor
    # names and shapes in the file's header are exactly those of the network the config describes (built on the
    # meta device, which allocates nothing), so the real build and load below are bounded by the file's size.
    _check_header_against_config(path, cfg)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: could not read tensors ({type(e).__name__}: {e})") from e
    generator = Generator(cfg, body=body, face=face)
    expected = generator.state_dict()
    for key in expected:
        if not torch.isfinite(tensors[key]).all():
            raise CheckpointError(f"{path}: tensor {key!r} contains NaN or inf")
    generator.load_state_dict(tensors, strict=True)
    _silence_unused_code_dims(path, generator, info)
    generator.checkpoint_info = info
    generator.checkpoint_path = path  # the file read (its samplers are found from it: generator.loading)
    return generator.to(device).eval()


def silence_noise_dims(generator, start: int, stop: int) -> int:
    """Zero the weights with which every layer reading the (identity, noise) latent sees noise dims
    ``start:stop`` (the radiance and super-resolution mappings' first layers, the face texture's latent
    projection), in place. A code that starts to set those dims (a wider appearance code) then renders exactly as
    before, and training teaches the generator to read them. Returns how many layers changed."""
    if not 0 <= start <= stop <= generator.cfg.noise_dim:
        raise ValueError(f"silence_noise_dims: dims {start}:{stop} outside the noise latent's "
                         f"{generator.cfg.noise_dim}")
    first = generator.cfg.identity_dim
    layers = [generator.radiance_mapping.net[0]]
    if generator.superres_mapping is not None:
        layers.append(generator.superres_mapping.net[0])
    if generator.face_texture is not None:
        layers.append(generator.face_texture.latent_proj)
    with torch.no_grad():
        for layer in layers:
            layer.weight[:, first + start:first + stop] = 0
    return len(layers)


def _silence_unused_code_dims(path: Path, generator, info: dict) -> None:
    """A generator trained on appearance codes that set only their first ``used_dims`` dims (``info.noise_latent``)
    never trained its weights on the rest: they keep their random initialisation. Zero them, so that wider codes
    (newer labels carry more) render as the codes it was trained on; exact for those codes (zeros there)."""
    noise = info.get("noise_latent") if isinstance(info, dict) else None
    if not isinstance(noise, dict) or noise.get("kind") != "appearance_code" or "used_dims" not in noise:
        return
    used = noise["used_dims"]
    if isinstance(used, bool) or not isinstance(used, int) or not 0 <= used <= generator.cfg.noise_dim:
        raise CheckpointError(f"{path}: info.noise_latent.used_dims must be an integer in [0, "
                              f"{generator.cfg.noise_dim}], got {used!r}")
    silence_noise_dims(generator, used, generator.cfg.noise_dim)


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Random in-place initialisers return their tensor untouched: on the meta device they only cost time (their
    first use imports PyTorch's Python decompositions, seconds), and shapes are all the header check needs."""

    SKIPPED = frozenset({"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "log_normal_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self.SKIPPED:
            target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes ``tensor=``
            if torch.is_tensor(target) and target.is_meta:
                return target
        return func(*args, **kwargs)


def _check_header_against_config(path: Path, cfg) -> None:
    """CheckpointError naming the file and the key unless the safetensors header holds exactly the tensors (names
    and shapes) of ``Generator(cfg)``; reads only the header and builds the network on the meta device."""
    from safetensors import safe_open

    from .generator import Generator

    try:
        with torch.device("meta"), _SkipRandomInit():
            expected = {k: tuple(v.shape) for k, v in Generator(cfg).state_dict().items()}
    except Exception as e:  # noqa: BLE001 - a config that passed validation but cannot be built
        raise CheckpointError(f"{path}: the generator config in its metadata cannot be built "
                              f"({type(e).__name__}: {e})") from e
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: could not read the tensor header ({type(e).__name__}: {e})") from e
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{path}: tensors do not match the stored config: " + "; ".join(parts))
    for key, shape in expected.items():
        if stored[key] != shape:
            raise CheckpointError(f"{path}: tensor {key!r} has shape {list(stored[key])}, the config expects "
                                  f"{list(shape)}")


#: What a change of ``radiance.kind`` replaces: the radiance network, its mapping and its truncation average.
RADIANCE_KEYS = ("radiance.", "radiance_mapping.", "radiance_style_avg")
#: What a resized expression network replaces: the deformation network and its mapping.
EXPRESSION_KEYS = ("expression_deform.", "expression_mapping.")
#: What a change of ``render.mode`` replaces: the manifold network. A frontal model's manifold is only constrained
#: in front; the shipped one pushes s below every level behind the head (rays from behind cross no level, a back
#: view renders nothing), so a 360-degree fine-tune starts from the closed shells again.
MANIFOLD_KEYS = ("manifold.",)


def replaced_keys(old, new) -> tuple[str, ...]:
    """State-dict prefixes that a change from config ``old`` to ``new`` (``GeneratorConfig``) rebuilds from scratch:
    :data:`RADIANCE_KEYS` when the radiance network changes kind or size (or, for convolutional textures, the
    level count), :data:`EXPRESSION_KEYS` when the expression network or its mapping changes size. Everything else
    (manifold, pose smoother, super-resolution) must keep its shapes to transfer; :data:`MANIFOLD_KEYS` when
    ``render.mode`` changes (frontal <-> 360)."""
    def radiance(c):
        r = c.radiance
        return (r.kind, r.width, r.depth, r.feature_dim if r.kind == "cnn" else None, r.cnn_channels, r.mapping,
                c.manifold.levels if r.kind == "cnn" else None)

    def expression(c):
        e = c.expression
        return e.width, e.depth, e.mapping, e.basis

    keys = RADIANCE_KEYS if radiance(old) != radiance(new) else ()
    keys = keys + (EXPRESSION_KEYS if expression(old) != expression(new) else ())
    return keys + (MANIFOLD_KEYS if old.render.mode != new.render.mode else ())


def transfer_weights(generator, state: dict[str, torch.Tensor], where: str, drop: tuple[str, ...] = ()) -> list[str]:
    """Load ``state`` (another generator's ``state_dict``) into ``generator``, whose config may differ in settings
    that keep the parameter shapes (more levels) or add modules (``radiance.modulated_colour``). Tensors whose
    names start with a prefix in ``drop`` are discarded first (e.g. :data:`RADIANCE_KEYS` when the radiance kind
    changes). Every other tensor of ``state`` must exist in ``generator`` with the same shape (ValueError naming
    ``where`` otherwise); returns the generator's keys left at their initialisation."""
    state = {k: v for k, v in state.items() if not k.startswith(drop)} if drop else state
    own = generator.state_dict()
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {list(state[k].shape)} -> {list(own[k].shape)}" for k in state
                if k in own and own[k].shape != state[k].shape]
    if unexpected or reshaped:
        raise ValueError(f"{where}: weights do not fit the new config: "
                         f"{'; '.join(unexpected[:5] + reshaped[:5])}")
    generator.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]
