"""The ``latency_ratio`` objective: measured on this worker's device, cached.

A latency only means something for one kind of device, so the cache key is
the device's model name (CPU model and thread count, or GPU name) plus the
exact network: zoo name, input shape and the hash of its kept counts. The
cache is a table of our database, shared by every worker and every job, so
a network timed once is never timed again on the same kind of device.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from core.db import repo
from core.db.session import session_factory, session_scope
from search import candidate_key, catalogue
from workers.nets import measure
from workers.steps.context import JobContext


def device_name(device: torch.device) -> str:
    """What a latency was measured on, precisely enough to compare measurements."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu:{model}:{torch.get_num_threads()} threads"


def latency_ms(ctx: JobContext, model: nn.Module, values: Sequence[int]) -> float:
    """Median forward time of ``model`` (the network of ``values``) at the job's batch.

    Read from the cache when this device kind timed the same network before.
    """
    batch = ctx.spec.search.latency_batch
    device = device_name(ctx.device)
    shape = "x".join(map(str, ctx.input_shape))
    # Ranks build different layers for different slice counts (k * rank channels).
    decomposes = catalogue.operator(ctx.spec.search.operator).decomposes
    slices = ctx.spec.search.lowrank_slices if decomposes else 1
    arch = f"{ctx.spec.model.arch}:{shape}:k{slices}:{candidate_key(values)}"
    factory = session_factory(ctx.settings.database_url)
    with session_scope(factory) as s:
        cached = repo.cached_latency(s, device, arch, batch)
    if cached is not None:
        return cached
    ms = measure.latency_ms(model, ctx.input_shape, device=ctx.device, batch_sizes=(batch,))[batch]
    with session_scope(factory) as s:
        return repo.store_latency(s, device, arch, batch, ms)
