"""Everything a task needs about one job, loaded once per process.

A trial must not re-read the dataset or the baseline weights from disk if
the process already has them: in the local mode one process runs every
trial, and a long-lived worker may run many trials of the same job. The
cache is keyed by job id and bounded, so a worker serving many jobs does
not hold all their data.
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.settings import Settings
from core.spec import DatasetSpec, JobSpec
from search import Budget, ModelProfile, SearchSpace
from workers.errors import DatasetNotFound
from workers.nets import data, zoo

BASELINE_FILE = "baseline.safetensors"
_CACHE_SIZE = 2


@dataclass
class JobContext:
    """A job's spec, data and baseline, on this process's device."""

    job_id: str
    spec: JobSpec
    settings: Settings
    device: torch.device
    data: data.DataSplits
    load_s: float
    baseline_state: dict[str, torch.Tensor] | None = None
    profile: ModelProfile | None = None
    group_bounds: tuple[tuple[float, float], ...] | None = None

    def take_load_time(self) -> float:
        """Seconds spent loading this context, reported once (by whoever loaded it)."""
        load_s, self.load_s = self.load_s, 0.0
        return load_s

    @property
    def job_dir(self) -> Path:
        return self.settings.job_dir(self.job_id)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.data.in_channels, self.data.size, self.data.size)

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape, device=self.device)

    def fresh_model(self) -> nn.Module:
        """An unpruned network of the job's architecture (random init)."""
        return zoo.build(
            self.spec.model.arch,
            in_channels=self.data.in_channels,
            num_classes=self.data.num_classes,
            input_size=self.data.size,
        ).to(self.device)

    def baseline(self) -> nn.Module:
        """A private copy of the trained baseline, ready to be pruned."""
        if self.baseline_state is None:
            self.baseline_state = load_file(str(self.job_dir / BASELINE_FILE), device="cpu")
        model = self.fresh_model()
        model.load_state_dict(self.baseline_state)
        return model

    def save_baseline(self, model: nn.Module) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(self.job_dir / BASELINE_FILE))
        self.baseline_state = state

    def space(self) -> SearchSpace:
        assert self.profile is not None, "profile is written by prepare"
        s = self.spec.search
        return SearchSpace(
            self.profile,
            min_ratio=s.min_ratio,
            round_to=s.round_to,
            operator=s.operator,
            group_bounds=self.group_bounds,
        )

    def budget(self) -> Budget:
        t = self.spec.target
        return Budget(flops_ratio=t.flops_ratio, params_ratio=t.params_ratio)


_contexts: OrderedDict[str, JobContext] = OrderedDict()


def resolve_device(name: str) -> torch.device:
    """The worker's device; a CUDA device that is not there is an error, not a fallback."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} requested but CUDA is not available")
    return device


def worker_name() -> str:
    """Who scored a candidate: the RQ worker's name, or host:pid in-process."""
    return os.environ.get("PRUNESEARCH_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def job_context(
    job_id: str,
    spec: JobSpec,
    settings: Settings,
    profile: dict | None,
    triage: dict | None = None,
) -> JobContext:
    """The cached context of ``job_id``, loading its dataset on first use.

    ``triage`` is the job's stored triage report; its ``bounds`` (when the
    spec narrows the space) become the space's per-group ratio bounds.
    """
    ctx = _contexts.get(job_id)
    if ctx is None:
        start = time.perf_counter()
        device = resolve_device(settings.device)
        splits = load_splits(spec, settings, device)
        ctx = JobContext(job_id, spec, settings, device, splits, time.perf_counter() - start)
        _contexts[job_id] = ctx
        while len(_contexts) > _CACHE_SIZE:
            _contexts.popitem(last=False)
    if profile is not None and ctx.profile is None:
        ctx.profile = ModelProfile.from_dict(profile)
    if triage and triage.get("bounds") and ctx.group_bounds is None:
        ctx.group_bounds = tuple((float(lo), float(hi)) for lo, hi in triage["bounds"])
    return ctx


def load_splits(spec: JobSpec, settings: Settings, device: torch.device | str) -> data.DataSplits:
    """The job's dataset, split by ``dataset.split_seed`` (default: the job's seed).

    Raises:
        DatasetNotFound: The dataset's files or folder are not there (or, a
            subclass, an imagefolder's tree cannot be used).
    """
    ds = spec.dataset
    folder = dataset_folder(ds, settings) if ds.name == "imagefolder" else None
    return data.load(
        ds.name,
        dirs=[] if folder else settings.dataset_dirs(ds.name),
        seed=spec.seed if ds.split_seed is None else ds.split_seed,
        val_fraction=ds.val_fraction,
        subset=ds.subset,
        device=device,
        root=folder,
        input_size=ds.resolved_size,
        channels=ds.resolved_channels,
        augment=ds.augment,
        mean=ds.mean,
        std=ds.std,
        loader_workers=ds.loader_workers,
        cache_mb=settings.dataset_cache_mb,
    )


def dataset_folder(ds: DatasetSpec, settings: Settings) -> Path:
    """An imagefolder's folder: ``path`` under the data directory, or an extracted upload.

    The spec already refuses ``..``; a symbolic link could still lead out of
    the data directory, so the resolved folder is checked too.

    Raises:
        DatasetNotFound: No data directory is set, the folder would be outside
            it, or it does not exist (the message names the folder tried).
    """
    if ds.upload is not None:
        folder = settings.dataset_upload_dir(ds.upload)
        if not folder.is_dir():
            raise DatasetNotFound(
                f"dataset upload {ds.upload} is not there (looked in {folder}): upload the "
                "archive again with POST /v1/datasets"
            )
        return folder
    if settings.data_dir is None:
        raise DatasetNotFound(
            f"imagefolder path {ds.path!r} is relative to the data directory, and none is "
            "set: set PRUNESEARCH_DATA_DIR"
        )
    base = settings.data_dir.resolve()
    folder = (base / (ds.path or "")).resolve()
    if not folder.is_relative_to(base):
        raise DatasetNotFound(
            f"imagefolder path {ds.path!r} leads to {folder}, outside the data directory "
            f"{base} (PRUNESEARCH_DATA_DIR)"
        )
    if not folder.is_dir():
        raise DatasetNotFound(
            f"imagefolder path {ds.path!r}: no folder {folder} in the data directory {base} "
            "(set by PRUNESEARCH_DATA_DIR)"
        )
    return folder


def forget(job_id: str) -> None:
    """Drop a finished job's data (and its GPU memory) from this process."""
    if _contexts.pop(job_id, None) is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
