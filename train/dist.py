"""Multi-process training helpers (torchrun). Gradients are averaged by hand after each backward (as StyleGAN's
loops do) instead of wrapping modules in DistributedDataParallel: R1 needs double backward, the generator runs
several forwards per step, and parts of the models are frozen - all awkward under DDP's hooks.

Every helper is a no-op when torch.distributed is not initialised (a single process).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as td


def is_on() -> bool:
    return td.is_available() and td.is_initialized()


def init() -> None:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    if is_on() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("BUSTO_DIST_BACKEND") != "gloo" else "gloo"
    td.init_process_group(backend)


def shutdown() -> None:
    if is_on():
        td.barrier()
        td.destroy_process_group()


def rank() -> int:
    return td.get_rank() if is_on() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return td.get_world_size() if is_on() else 1


def barrier() -> None:
    if is_on():
        td.barrier()


def allreduce_grads(params, world: int) -> None:
    """Average gradients over ranks (missing grads count as zeros), flattened into one buffer per call."""
    if not is_on() or world <= 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    td.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def average_scalars(values: dict[str, float], world: int) -> dict[str, float]:
    if not is_on() or world <= 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    td.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def any_flag(flag: bool) -> bool:
    """True on every rank if any rank has ``flag`` set (signals reach ranks at different times)."""
    if not is_on():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    td.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_path(path: Path | None) -> Path | None:
    if not is_on():
        return path
    obj = [str(path) if path is not None else None]
    td.broadcast_object_list(obj, src=0)
    return Path(obj[0]) if obj[0] is not None else None


def broadcast_module_states(modules) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not is_on():
        return
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            td.broadcast(t.data, src=0)
