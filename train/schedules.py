"""Schedules as pure functions of the step (and the global batch): no hidden counters, exact on resume."""

from __future__ import annotations

import math


def kimg(step: int, batch: int) -> float:
    """Thousands of real images shown after ``step`` steps of global batch ``batch``."""
    return step * batch / 1000.0


def pose_prior_weight(step: int, batch: int, initial: float, hold_kimg: float, decay_kimg: float) -> float:
    """3DPortraitGAN L_preg weight: ``initial`` for ``hold_kimg``, then linear decay to 0 over ``decay_kimg``."""
    k = kimg(step, batch)
    if k <= hold_kimg:
        return initial
    if decay_kimg <= 0:
        return 0.0
    return initial * max(0.0, 1.0 - (k - hold_kimg) / decay_kimg)


def ema_beta(step: int, batch: int, half_life_kimg: float, rampup: float) -> float:
    """EMA decay per step for a half-life in thousands of images (StyleGAN2-ADA style), with ramp-up:
    the half-life is at most ``step * batch * rampup`` images early in training."""
    half_life = half_life_kimg * 1000.0
    if rampup > 0:
        half_life = min(half_life, step * batch * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch / half_life)


def cosine_lr_factor(step: int, total: int, min_fraction: float, warmup: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up over ``warmup`` steps (from 1/warmup), then cosine decay from
    1 to ``min_fraction`` at ``total`` steps (``min_fraction`` 1 = constant)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    frac = min(step, total) / max(1, total)
    return warm * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * frac)))


def r1_due(step: int, interval: int) -> bool:
    """Lazy R1: regularise on steps 0, interval, 2*interval, ..."""
    return step % interval == 0


def lazy_adam_betas(beta1: float, beta2: float, interval: int) -> tuple[float, float]:
    """Adam betas adjusted for a regulariser applied every ``interval`` steps (StyleGAN2): beta**(k/(k+1))."""
    c = interval / (interval + 1)
    return beta1 ** c, beta2 ** c


def lazy_lr(lr: float, interval: int) -> float:
    return lr * interval / (interval + 1)


def every(step: int, period: int) -> bool:
    """True on steps that are positive multiples of ``period`` (period 0 = never)."""
    return period > 0 and step > 0 and step % period == 0


def eta_seconds(steps_done: int, steps_total: int, seconds_elapsed: float) -> float:
    if steps_done <= 0:
        return math.inf
    return (steps_total - steps_done) * seconds_elapsed / steps_done
