"""Super-resolution precision in bakes: bfloat16 only where the CPU has it natively, equal to float32 within its
rounding, never in differentiable calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from portrait_core.generator import Generator, Latents, generator_config
from portrait_core.generator.precision import PRECISION_ENV, native_bf16_cpu, superres_bake_dtype

AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"


def test_native_bf16_is_read_from_the_cpu_flags_and_the_variable_forces_it():
    assert native_bf16_cpu(AMX) and native_bf16_cpu(AMX.replace("amx_bf16", "avx512_bf16"))
    assert not native_bf16_cpu(OLD) and not native_bf16_cpu("")
    assert superres_bake_dtype("cpu", {PRECISION_ENV: "float32"}) == torch.float32
    assert superres_bake_dtype("cpu", {PRECISION_ENV: "BFloat16 "}) == torch.bfloat16
    assert superres_bake_dtype("cuda", {}) == torch.float32  # auto: bfloat16 is a CPU choice only
    with pytest.raises(ValueError, match="BUSTO_SR_PRECISION='half'"):
        superres_bake_dtype("cpu", {PRECISION_ENV: "half"})


def test_bfloat16_bakes_change_the_networks_residual_by_under_two_percent(monkeypatch):
    torch.manual_seed(0)
    g = Generator(generator_config("tiny")).eval()
    with torch.no_grad():  # give the untrained network a residual worth measuring
        for p in g.superres.parameters():
            p.mul_(4.0)
    lat = Latents.sample(1, seed=1)
    with torch.no_grad():
        tex = g.bake_textures(g.radiance_styles(lat))
        styles = g.superres_styles(lat)
        monkeypatch.setenv(PRECISION_ENV, "float32")
        full = g.super_resolve_textures(tex, styles)
        monkeypatch.setenv(PRECISION_ENV, "bfloat16")
        half = g.super_resolve_textures(tex, styles)
    assert half.dtype == torch.float32 and half.shape == full.shape
    up = F.interpolate(tex[0, :, :4], scale_factor=g.cfg.superres.scale, mode="bilinear", align_corners=False)[None]
    residual = (full - up).square().mean().sqrt()
    error = (half - full).square().mean().sqrt()
    assert 0 < error < 0.02 * residual, (float(error), float(residual))
    # with gradients (training, inversion) the network always runs in float32
    tex.requires_grad_(True)
    torch.testing.assert_close(g.super_resolve_textures(tex, styles).detach(), full, rtol=0, atol=1e-6)
