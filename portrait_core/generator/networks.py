"""The generator's networks: mappings, manifold field, FiLM-SIREN radiance, expression deformation, pose
smoother and manifold super-resolution.

Every field takes points in **metres in the canonical frame** (origin at the canonical neck joint, +Y up, subject
faces +Z) and converts them once, internally, to network units (:func:`to_network_units`: origin at the face
centre, 1 unit = 1.1775 m, the official AniPortraitGAN normalisation). Offsets come back in metres.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from portrait_core import conventions as C

from .config import (
    ExpressionDeformConfig,
    ManifoldConfig,
    MappingConfig,
    PoseDeformConfig,
    RadianceConfig,
    SuperResConfig,
)

__all__ = [
    "to_network_units", "MappingNetwork", "film_siren", "film_siren_reference", "FiLMSiren", "RadianceField", "ManifoldField", "ExpressionDeformNet",
    "PoseSmoother", "StyleRRDBNet", "TextureCNN", "box_window",
]


def to_network_units(points: Tensor) -> Tensor:
    """Canonical-frame metres [..., 3] -> network units: ``(p - FACE_CENTRE) / UNIT_METRES``."""
    centre = points.new_tensor(C.FACE_CENTRE)
    return (points - centre) / C.UNIT_METRES


def box_window(points: Tensor, centre: Tensor, half_extent: Tensor, fade: float) -> Tensor:
    """Smooth box window [..., 1]: 1 inside the box shrunk by ``fade * half_extent``, 0 outside the box,
    a C1 smoothstep in between (product over the three axes). Points and box in the same units."""
    d = (points - centre).abs() / half_extent  # 0 at the centre, 1 on the faces
    ramp = ((1.0 - d) / fade).clamp(0.0, 1.0)
    w = ramp * ramp * (3.0 - 2.0 * ramp)
    return w.prod(dim=-1, keepdim=True)


# --- mapping --------------------------------------------------------------------------------------------------

class MappingNetwork(nn.Module):
    """Latent -> style vector: ``layers`` x (Linear, LeakyReLU 0.2), then Linear.

    Kaiming-normal init (a = 0.2, fan-in), zero biases, the last weight scaled by ``last_gain``.
    """

    def __init__(self, in_dim: int, out_dim: int, cfg: MappingConfig, last_gain: float = 1.0):
        super().__init__()
        dims = [in_dim] + [cfg.hidden] * cfg.layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.net[-1].weight.mul_(last_gain)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


CPU_INFERENCE_ACTIVATIONS = 1 << 19
"""Activation elements (points x layer width, over the batch) per call of a coordinate network when a CPU runs it
without gradients (the radiance and face-texture bakes): 2 MiB of float32 per layer output stays in the caches,
and the allocator reuses it instead of faulting in fresh pages for every 32 MiB temporary. Each point's
computation is independent, so the result equals one call (:func:`inference_chunk`). The shipped model's radiance
bake (82k points, width 128): 516 -> 314 ms with 1 thread, 262 -> 202 ms with 2; its face-texture bake (65k
texels, width 64) 51 -> 17 ms with 1 thread (docs/generator.md)."""


def inference_chunk(points: int, batch: int, width: int, device: torch.device, cap: int) -> int:
    """Points per call of a ``width``-wide coordinate network over ``batch`` x ``points``: at most ``cap`` (the
    config's memory bound), on a CPU without gradients at most :data:`CPU_INFERENCE_ACTIVATIONS` activations
    (at least 256 points); elsewhere ``cap`` (GPUs want large calls; autograd keeps every chunk anyway)."""
    if device.type != "cpu" or torch.is_grad_enabled():
        return max(1, min(cap, points))
    return max(1, min(cap, points, max(256, CPU_INFERENCE_ACTIVATIONS // max(1, batch * width))))


# --- FiLM-SIREN ----------------------------------------------------------------------------------------------

def _siren_init(linear: nn.Linear, first: bool) -> None:
    fan_in = linear.in_features
    bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / 25.0
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)
        linear.bias.uniform_(-bound, bound)


def film_siren_reference(x: Tensor, weight: Tensor, bias: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
    """``sin((15 f + 30) * (W x + b) + phase)``, written as it reads (the reference of :func:`film_siren`)."""
    return torch.sin((15.0 * freq + 30.0) * F.linear(x, weight, bias) + phase)


def film_siren(x: Tensor, weight: Tensor, bias: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
    """:func:`film_siren_reference` with the FiLM frequency folded into the weights: for x [B, P, in] and
    freq, phase [B or 1, 1, out], ``a = 15 f + 30`` gives ``sin(x (a W)^T + (a b + phase))``: one batched
    matrix product with its bias and one sine (in place without autograd) instead of a product and three
    elementwise passes over [B, P, out]. Other shapes take the reference."""
    if x.dim() != 3 or freq.dim() != 3 or freq.shape[1] != 1 or freq.shape[0] not in (1, x.shape[0]):
        return film_siren_reference(x, weight, bias, freq, phase)
    a = 15.0 * freq + 30.0  # [B, 1, out]
    w = weight.t()[None] * a  # [B, in, out]
    y = torch.baddbmm(torch.addcmul(phase, bias, a), x, w.expand(x.shape[0], -1, -1))
    return torch.sin(y) if torch.is_grad_enabled() else y.sin_()


class FiLMSiren(nn.Module):
    """``h = sin(freq * (W x + b) + phase)`` with ``freq = 15 f + 30`` from the raw style ``f``."""

    def __init__(self, in_dim: int, out_dim: int, first: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        _siren_init(self.linear, first)

    def forward(self, x: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
        return film_siren(x, self.linear.weight, self.linear.bias, freq, phase)


def _split_film(styles: Tensor, n_layers: int, width: int) -> tuple[Tensor, Tensor]:
    """Raw styles [B, 2 * n_layers * width] -> freq, phase [B, n_layers, width]."""
    freq, phase = styles.reshape(styles.shape[0], 2, n_layers, width).unbind(1)
    return freq, phase


class RadianceField(nn.Module):
    """FiLM-SIREN radiance field with rgb / sigma / feature heads summed over trunk layers 1..depth-1.

    The last rgb contribution reads a colour FiLM layer applied to the last trunk output (its own freq/phase
    slot). There is no view-direction input: the baked textures cannot depend on the view, so training does
    not either (a deliberate deviation; the official code fixes the view to (0, 0, -1) at bake time).
    """

    def __init__(self, cfg: RadianceConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.trunk = nn.ModuleList([FiLMSiren(3, w, first=True)] + [FiLMSiren(w, w) for _ in range(cfg.depth - 1)])
        self.colour_layer = FiLMSiren(w, w)
        n_heads = cfg.depth - 1
        self.sigma_heads = nn.ModuleList([nn.Linear(w, 1) for _ in range(n_heads)])
        self.feature_heads = nn.ModuleList([nn.Linear(w, cfg.feature_dim) for _ in range(n_heads)])
        self.rgb_heads = nn.ModuleList([nn.Linear(w, 3) for _ in range(n_heads)])
        for head in [*self.sigma_heads, *self.feature_heads, *self.rgb_heads]:
            _siren_init(head, first=False)
        if cfg.modulated_colour:  # rgb += modulated_rgb(h * colour_modulation(style)); zero output at init
            self.colour_modulation = nn.Linear(self.style_dim, w)
            nn.init.normal_(self.colour_modulation.weight, 0.0, 1.0 / math.sqrt(self.style_dim))
            nn.init.ones_(self.colour_modulation.bias)
            self.modulated_rgb = nn.Linear(w, 3)
            nn.init.zeros_(self.modulated_rgb.weight)
            nn.init.zeros_(self.modulated_rgb.bias)

    @property
    def style_dim(self) -> int:
        """Raw style size: (depth trunk layers + 1 colour layer) x width x {freq, phase}."""
        return 2 * (self.cfg.depth + 1) * self.cfg.width

    def forward(self, points: Tensor, styles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """points [B, P, 3] metres (canonical), styles [B, style_dim] ->
        rgb [B, P, 3] in [0, 1], sigma [B, P, 1] (raw), features [B, P, feature_dim]."""
        freq, phase = _split_film(styles, self.cfg.depth + 1, self.cfg.width)
        freq, phase = freq[:, :, None, :], phase[:, :, None, :]  # [B, L, 1, W]: broadcast over points
        h = to_network_units(points) * self.cfg.input_scale
        sigma = rgb = features = 0.0
        last = self.cfg.depth - 1
        for i, layer in enumerate(self.trunk):
            h = layer(h, freq[:, i], phase[:, i])
            if i == 0:
                continue
            sigma = sigma + self.sigma_heads[i - 1](h)
            features = features + self.feature_heads[i - 1](h)
            colour_input = self.colour_layer(h, freq[:, -1], phase[:, -1]) if i == last else h
            rgb = rgb + self.rgb_heads[i - 1](colour_input)
        if self.cfg.modulated_colour:
            rgb = rgb + self.modulated_rgb(colour_input * self.colour_modulation(styles)[:, None, :])
        return torch.sigmoid(rgb), sigma, features


class TextureCNN(nn.Module):
    """Convolutional level textures (``radiance.kind='cnn'``): a style vector -> every level's texture at once.

    A StyleGAN2-like synthesis network: a learned 4x4 constant, then one block per doubling of the side
    (bilinear x2, two modulated 3x3 convs, LeakyReLU 0.2) with skip outputs: each block's modulated 1x1 conv
    writes ``levels * (4 + feature_dim)`` channels that are upsampled and summed (coarse-to-fine). Output per
    level and texel: rgb logits (3), raw sigma (1) and features, the same quantities as the FiLM-SIREN gives at
    a point. The styles come straight from the mapping network (offset by +1 in the convolutions).
    """

    OUTPUT_GAIN = 0.25
    """Scales the summed skip outputs, so an untrained network's logits stay near 0 (grey, body-prior alpha)."""

    def __init__(self, cfg: RadianceConfig, levels: int):
        super().__init__()
        self.cfg, self.levels = cfg, levels
        self.out_per_level = 4 + cfg.feature_dim
        ch = cfg.cnn_channels
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.convs = nn.ModuleList()
        self.to_textures = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            first = ModulatedConv2d(prev, c, 3) if i else ModulatedConv2d(c, c, 3)
            self.convs.append(nn.ModuleList([first, ModulatedConv2d(c, c, 3)]))
            self.to_textures.append(ModulatedConv2d(c, levels * self.out_per_level, 1, demodulate=False))
            prev = c

    @property
    def style_dims(self) -> list[int]:
        dims = []
        for pair, out in zip(self.convs, self.to_textures):
            dims += [pair[0].in_ch, pair[1].in_ch, out.in_ch]
        return dims

    @property
    def style_dim(self) -> int:
        return sum(self.style_dims)

    @property
    def resolution(self) -> int:
        return 4 * 2 ** (len(self.cfg.cnn_channels) - 1)

    def forward(self, styles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """styles [G, style_dim] -> rgb [G, L, 3, T, T] in [0, 1], sigma [G, L, 1, T, T] (raw), features
        [G, L, C, T, T]; texel (i, j) of level l is the texture coordinate grid of ``rendering.texture_coords``."""
        g = styles.shape[0]
        parts = list(torch.split(styles, self.style_dims, dim=-1))
        x = self.const[None, None].expand(g, 1, -1, -1, -1)  # [G, 1, C, 4, 4]
        out = None
        for i, (pair, to_tex) in enumerate(zip(self.convs, self.to_textures)):
            if i:
                x = _upsample2(x)
                out = _upsample2(out)
            for conv in pair:
                x = F.leaky_relu(conv(x, parts.pop(0)), 0.2)
            y = to_tex(x, parts.pop(0))
            out = y if out is None else out + y
        t = self.resolution
        out = (out[:, 0] * self.OUTPUT_GAIN).reshape(g, self.levels, self.out_per_level, t, t)
        return torch.sigmoid(out[:, :, :3]), out[:, :, 3:4], out[:, :, 4:]


def _upsample2(x: Tensor) -> Tensor:
    """Bilinear x2 of [G, N, C, H, W]."""
    g, n = x.shape[:2]
    y = F.interpolate(x.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
    return y.reshape(g, n, *y.shape[1:])


# --- manifold field ------------------------------------------------------------------------------------------

class ManifoldField(nn.Module):
    """Latent-free scalar field ``s(x) = |(x - c) / axes| + MLP(x_n)`` (metres); level l is ``{s = l}``.

    The ReLU MLP's last layer is zero-initialised, so the levels ``linspace(r_max, r_min, K)`` start as nested
    ellipsoidal shells around ``centre``; s grows outwards, so along a ray from outside the first (decreasing)
    crossing of each level is the front of its shell, from any direction. The MLP sees network units.
    """

    def __init__(self, cfg: ManifoldConfig):
        super().__init__()
        self.cfg = cfg
        dims = [3] + [cfg.width] * cfg.hidden_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / b))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        last = nn.Linear(dims[-1], 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("centre", torch.tensor(cfg.centre, dtype=torch.float32), persistent=False)
        self.register_buffer("axes", torch.tensor(cfg.axes, dtype=torch.float32), persistent=False)
        self.register_buffer("levels", torch.linspace(cfg.radius_max, cfg.radius_min, cfg.levels), persistent=False)

    def radial(self, points: Tensor) -> Tensor:
        """The analytic shell part ``|(x - c) / axes|`` [...] (metres)."""
        return ((points - self.centre.to(points.dtype)) / self.axes.to(points.dtype)).norm(dim=-1)

    def residual(self, points: Tensor) -> Tensor:
        """The learned part ``MLP(x_n)`` [...] (metres)."""
        x = (points - self.centre.to(points.dtype)) / C.UNIT_METRES * self.cfg.input_scale
        return self.mlp(x).squeeze(-1) * C.UNIT_METRES

    def forward(self, points: Tensor) -> Tensor:
        """points [..., 3] metres -> s [...] (metres)."""
        return self.radial(points) + self.residual(points)


# --- expression deformation ----------------------------------------------------------------------------------

def combine_basis_reference(basis: Tensor, coefficients: Tensor) -> Tensor:
    """:func:`combine_basis` as a broadcast product and sum."""
    shape = (coefficients.shape[0], coefficients.shape[1]) + (1,) * (basis.dim() - 2)
    return (coefficients.reshape(shape).to(basis.dtype) * basis).sum(1)


def combine_basis(basis: Tensor, coefficients: Tensor) -> Tensor:
    """Basis fields weighted by coefficients, ``sum_j c[:, j] * basis[:, j]``: basis [1 or B, r, ...] (a baked
    identity's volumes, or per-point fields), coefficients [B, r] -> [B, ...]. One matrix product over the
    flattened fields (a frame's expression grids from an avatar's baked basis)."""
    flat = basis.flatten(2)
    out = torch.matmul(coefficients.unsqueeze(1).to(flat.dtype), flat).squeeze(1)
    return out.reshape(coefficients.shape[0], *basis.shape[2:])


class ExpressionDeformNet(nn.Module):
    """FiLM-SIREN expression deformation in canonical-pose space: offsets Delta(x) in metres.

    3-d input (no always-zero channels), zero-initialised output layer (training starts at the identity
    deformation), Delta in the units of the point (pitfall #1 fixed), confined to the head box by
    :func:`box_window`. With ``cfg.shading`` a zero-initialised ``shading_head`` adds a fourth channel, the
    expression shading logit (unitless, windowed like Delta). With ``cfg.basis`` = r > 0 the heads output r
    basis fields per point instead of one field (:meth:`basis`; the generator weights them by the expression).
    """

    def __init__(self, cfg: ExpressionDeformConfig, expression_dim: int = C.EXPRESSION_DIM):
        super().__init__()
        self.cfg = cfg
        self.fields = max(1, cfg.basis)
        # c = A e: the basis fields' weights, linear in the expression (no bias: neutral is exactly 0)
        self.coefficients = nn.Linear(expression_dim, cfg.basis, bias=False) if cfg.basis else None
        self.layers = nn.ModuleList([FiLMSiren(3, cfg.width, first=True)] +
                                    [FiLMSiren(cfg.width, cfg.width) for _ in range(cfg.depth - 1)])
        self.head = nn.Linear(cfg.width, 3 * self.fields)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.shading_head = None
        if cfg.shading:
            self.shading_head = nn.Linear(cfg.width, self.fields)
            nn.init.zeros_(self.shading_head.weight)
            nn.init.zeros_(self.shading_head.bias)
        self.register_buffer("box_centre", torch.tensor(cfg.head_box_centre, dtype=torch.float32), persistent=False)
        self.register_buffer("box_half", torch.tensor(cfg.head_box_half_extent, dtype=torch.float32),
                             persistent=False)

    @property
    def style_dim(self) -> int:
        return 2 * self.cfg.depth * self.cfg.width

    def window(self, points: Tensor) -> Tensor:
        return box_window(points, self.box_centre.to(points.dtype), self.box_half.to(points.dtype), self.cfg.fade)

    @property
    def channels(self) -> int:
        """3 (Delta) or 4 (Delta and the shading logit)."""
        return 3 if self.shading_head is None else 4

    def basis(self, points: Tensor, styles: Tensor) -> Tensor:
        """points [B, P, 3] metres (canonical pose, expressive), styles [B, style_dim] -> [B, P, fields, channels]:
        per field, Delta in metres (``points + Delta`` is the neutral canonical point), then (with shading) the
        shading logit."""
        freq, phase = _split_film(styles, self.cfg.depth, self.cfg.width)
        freq, phase = freq[:, :, None, :], phase[:, :, None, :]
        h = to_network_units(points) * self.cfg.input_scale
        for i, layer in enumerate(self.layers):
            h = layer(h, freq[:, i], phase[:, i])
        window = self.window(points)[..., None]
        delta = self.head(h).unflatten(-1, (self.fields, 3)) * C.UNIT_METRES * window
        if self.shading_head is None:
            return delta
        return torch.cat([delta, self.shading_head(h)[..., None] * window], -1)

    def forward(self, points: Tensor, styles: Tensor) -> Tensor:
        """The single field (``cfg.basis`` = 0): points [B, P, 3], styles [B, style_dim] -> [B, P, channels]."""
        return self.basis(points, styles)[..., 0, :]


# --- pose smoother -------------------------------------------------------------------------------------------

class PoseSmoother(nn.Module):
    """Learnable low-pass filter over a volume of per-point transform entries (the paper's "pose deformation
    processing network").

    Depthwise conv3d, one k^3 kernel per channel and pass, re-normalised to sum 1 at every forward (so constant
    fields, e.g. the identity transform of the canonical pose, pass unchanged); replicate padding; no bias or
    activation. Initialised uniform in [0.5, 1) (a near-box filter).
    """

    def __init__(self, cfg: PoseDeformConfig, channels: int = 12):
        super().__init__()
        k = cfg.kernel_size
        self.channels, self.passes, self.pad = channels, cfg.passes, k // 2
        self.kernels = nn.Parameter(torch.empty(cfg.passes, channels, 1, k, k, k).uniform_(0.5, 1.0))

    def normalised_kernels(self) -> Tensor:
        k = self.kernels
        return k / k.sum(dim=(-3, -2, -1), keepdim=True)

    def forward(self, volume: Tensor) -> Tensor:
        """volume [B, channels, D, H, W] -> smoothed volume, same shape."""
        kernels = self.normalised_kernels().to(volume.dtype)
        p = self.pad
        for i in range(self.passes):
            volume = F.conv3d(F.pad(volume, (p,) * 6, mode="replicate"), kernels[i], groups=self.channels)
        return volume

    def box_filter(self, volume: Tensor) -> Tensor:
        """The same passes with uniform kernels (the AvgPool that the paper's smoother loss compares with)."""
        k, p = 2 * self.pad + 1, self.pad
        for _ in range(self.passes):
            volume = F.avg_pool3d(F.pad(volume, (p,) * 6, mode="replicate"), k, stride=1)
        return volume


# --- super-resolution ----------------------------------------------------------------------------------------

class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated + demodulated convolution. The style [G, in] (one per group of samples) comes from
    the SR mapping network directly (offset by +1, so a zero style is the plain conv)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, demodulate: bool = True):
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel_size
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.demodulate = demodulate

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x [G, N, in, H, W] (N samples share group g's style), style [G, in] -> [G, N, out, H, W]."""
        g, n, _, h, w = x.shape
        weight = self.weight[None] * (style + 1.0)[:, None, :, None, None] / math.sqrt(self.in_ch * self.k ** 2)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        x = x.transpose(0, 1).reshape(n, g * self.in_ch, h, w)
        y = F.conv2d(x, weight.reshape(g * self.out_ch, self.in_ch, self.k, self.k), padding=self.k // 2, groups=g)
        y = y.reshape(n, g, self.out_ch, h, w).transpose(0, 1)
        return y + self.bias[:, None, None]


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(nf + i * gc, gc, 3, padding=1) for i in range(4)])
        self.conv_out = nn.Conv2d(nf + 4 * gc, nf, 3, padding=1)
        for conv in [*self.convs, self.conv_out]:
            nn.init.kaiming_normal_(conv.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.conv_out(torch.cat(feats, 1))


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualDenseBlock(nf, gc) for _ in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.blocks(x)


class StyleRRDBNet(nn.Module):
    """Manifold super-resolution: baked textures [G, K, 4 + C, T, T] -> RGBA [G, K, 4, sT, sT] in [0, 1].

    RRDB trunk, then ``log2(scale)`` x (ModConv, PixelShuffle(2), LeakyReLU), HR ModConv, 1x1 ModConv. A
    deviation from GRAM-HD: the output is ``sigmoid(logit(bilinear_up(RGBA_LR)) + gain * conv_last)`` with
    ``gain`` starting at 0.01, so an untrained SR is nearly the bilinear upsampler and the LR/HR consistency loss
    starts at ~0. Sigmoid on all four channels (LR and HR share the [0, 1] colour range).
    """

    def __init__(self, in_channels: int, cfg: SuperResConfig):
        super().__init__()
        self.cfg = cfg
        self.conv_first = nn.Conv2d(in_channels, cfg.nf, 3, padding=1)
        self.trunk = nn.Sequential(*[RRDB(cfg.nf, cfg.gc) for _ in range(cfg.nb)])
        self.trunk_conv = nn.Conv2d(cfg.nf, cfg.nf, 3, padding=1)
        ups, prev = [], cfg.nf
        for ch in cfg.up_channels:
            ups.append(ModulatedConv2d(prev, ch * 4, 3))
            prev = ch
        self.up_convs = nn.ModuleList(ups)
        self.hr_conv = ModulatedConv2d(prev, prev, 3)
        self.conv_last = ModulatedConv2d(prev, 4, 1)
        self.residual_gain = nn.Parameter(torch.full((), 0.01))

    @property
    def style_dims(self) -> list[int]:
        return [m.in_ch for m in (*self.up_convs, self.hr_conv, self.conv_last)]

    @property
    def style_dim(self) -> int:
        return sum(self.style_dims)

    def forward(self, textures: Tensor, styles: Tensor, channels_last: bool | None = None) -> Tensor:
        """textures [G, K, 4 + C, T, T] (rgb, alpha in [0, 1], features), styles [G, style_dim]. ``channels_last``
        (default: on the CPU without gradients, i.e. avatar bakes) runs the convolutions on channels-last tensors,
        about a quarter faster on the CPU (oneDNN) and equal to the default layout to float rounding (tested)."""
        g, k, c, t, _ = textures.shape
        x = textures.reshape(g * k, c, t, t)
        if channels_last is None:
            channels_last = x.device.type == "cpu" and not torch.is_grad_enabled()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feat = self.conv_first(x)
        feat = feat + self.trunk_conv(self.trunk(feat))
        feat = feat.reshape(g, k, *feat.shape[1:])
        style_parts = list(torch.split(styles, self.style_dims, dim=-1))
        for conv in self.up_convs:
            feat = conv(feat, style_parts.pop(0))
            gg, kk, ch, h, w = feat.shape
            feat = F.leaky_relu(F.pixel_shuffle(feat.reshape(gg * kk, ch, h, w), 2), 0.2)
            feat = feat.reshape(gg, kk, *feat.shape[1:])
        feat = F.leaky_relu(self.hr_conv(feat, style_parts.pop(0)), 0.2)
        out = self.conv_last(feat, style_parts.pop(0))
        size = t * self.cfg.scale
        base = F.interpolate(x[:, :4], size=(size, size), mode="bilinear", align_corners=False)
        base = torch.logit(base.clamp(1e-4, 1 - 1e-4)).reshape(g, k, 4, size, size)
        return torch.sigmoid(base + self.residual_gain * out)
