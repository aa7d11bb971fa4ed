"""The job's trained baseline: trained in ``prepare``, or taken from the cache.

A batch of jobs over one model (a grid over targets and samplers, a
benchmark) would otherwise train the same network once per job. With
``PRUNESEARCH_BASELINE_CACHE`` set, a baseline is stored under a key made
of everything that determines it (architecture, dataset and split, training
recipe, pretraining epochs, seed, device kind) and the next job with the
same key loads it instead of training. The files are safetensors: loading
one never runs code.

A job whose ``model.weights`` names an upload starts from the user's
network instead: the file is loaded strictly (every tensor, exact shapes,
so weights for another dataset's channels or classes fail the job with the
reason) and nothing is pretrained. Uploads bypass the cache: loading one
costs what loading a cached baseline costs.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from workers.errors import WorkerError
from workers.steps import candidate
from workers.steps.context import JobContext


def cache_key(ctx: JobContext) -> str:
    """Hash of every input that determines the trained weights."""
    spec = ctx.spec
    what = {
        "model": spec.model.model_dump(mode="json"),
        "dataset": spec.dataset.model_dump(mode="json"),
        "train": spec.train.model_dump(mode="json"),
        "seed": spec.seed,
        "device": ctx.device.type,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def trained(ctx: JobContext) -> nn.Module:
    """The baseline on the job's device, saved as the job's ``baseline.safetensors``."""
    if ctx.spec.model.weights is not None:
        model = uploaded(ctx, ctx.spec.model.weights)
        ctx.save_baseline(model)
        return model
    cache = ctx.settings.baseline_cache
    path = None if cache is None else cache / f"{cache_key(ctx)}.safetensors"
    model = ctx.fresh_model()
    if path is not None and path.is_file():
        model.load_state_dict(load_file(str(path), device=str(ctx.device)))
    else:
        torch.manual_seed(ctx.spec.seed)
        model = ctx.fresh_model()
        if ctx.spec.model.pretrain_epochs > 0:
            candidate.fit(ctx, model, epochs=ctx.spec.model.pretrain_epochs)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            partial = path.with_suffix(".partial")
            save_file(state, str(partial))
            partial.replace(path)  # atomic: a concurrent job never reads half a file
    ctx.save_baseline(model)
    return model


def uploaded(ctx: JobContext, upload_id: str) -> nn.Module:
    """The job's network with the uploaded weights, loaded strictly (no pretraining).

    Raises:
        WorkerError: The file is gone, or its tensors do not fit the network
            this job's dataset needs (channels, classes).
    """
    path = ctx.settings.weights_path(upload_id)
    if not path.is_file():
        raise WorkerError(f"uploaded weights {upload_id} are missing ({path}); upload them again")
    model = ctx.fresh_model()
    try:
        model.load_state_dict(load_file(str(path), device=str(ctx.device)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        shape = (
            f"in_channels={ctx.data.in_channels}, num_classes={ctx.data.num_classes}, "
            f"input_size={ctx.data.size}"
        )
        raise WorkerError(
            f"uploaded weights {upload_id} do not fit {ctx.spec.model.arch}({shape}) that "
            f"dataset {ctx.spec.dataset.name} needs: {exc}"
        ) from exc
    return model
