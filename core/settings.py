"""The one Settings object (environment prefix ``PRUNESEARCH_``).

Defaults work on a laptop: everything lives under ``PRUNESEARCH_HOME``
(``./prunesearch-data``): SQLite for our tables and for Optuna (separate
files, because Optuna's table names are generic), artifacts in a folder.
A deployment sets ``DATABASE_URL`` / ``OPTUNA_URL`` to PostgreSQL and
``ARTIFACT_DIR`` to a volume every worker shares.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SYSTEM_DATA_DIRS = (Path("/usr/share/datasets"),)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNESEARCH_", extra="ignore")

    home: Path = Path("prunesearch-data")
    database_url: str = ""
    optuna_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifact_dir: Path | None = None
    data_dir: Path | None = None
    device: str = "cpu"
    # "keys": every request needs an API key (``prunesearch keys create``);
    # "none": one implicit owner, for a single user on loopback only.
    auth: Literal["keys", "none"] = "keys"
    # Requests per API key in any sliding minute (0: unlimited); beyond it, 429 + Retry-After.
    rate_limit: int = 600
    # Per owner: jobs not yet ended, and trials of them not yet finished (0: unlimited).
    # A submission (a batch with all its jobs) that would go over either is a 429 and stores
    # nothing. The defaults admit one batch of the largest size (service.batches).
    max_active_jobs: int = Field(default=200, ge=0)
    max_queued_trials: int = Field(default=20_000, ge=0)
    # Largest accepted weights upload (POST /v1/weights).
    max_upload_mb: int = 512
    # Largest accepted dataset archive (POST /v1/datasets); it may unpack to 4x that,
    # and hold at most max_dataset_files members (files and folders).
    max_dataset_mb: int = 2048
    max_dataset_files: int = 500_000
    # Trained baselines keyed by everything that determines them (model, data,
    # training recipe, seed, device kind): a batch of jobs on one model trains
    # it once. Off unless set (PRUNESEARCH_BASELINE_CACHE).
    baseline_cache: Path | None = None
    # An imagefolder dataset whose decoded images (uint8, at the input size)
    # fit in this many MiB is decoded once into memory; a larger one streams
    # from disk through a DataLoader. 0: always stream.
    dataset_cache_mb: float = Field(default=1024, ge=0)
    # A searching job is "stalled" (API job view, /metrics, dashboard) when no trial has
    # finished for max(stall_floor_s, stall_factor x its median trial time): service.stall.
    stall_factor: float = Field(default=5.0, gt=0)
    stall_floor_s: float = Field(default=180.0, ge=0)

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        home = self.home.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'prunesearch.db'}"
        if not self.optuna_url:
            self.optuna_url = f"sqlite:///{home / 'optuna.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = home / "artifacts"
        return self

    @cached_property
    def artifacts(self) -> Path:
        """The artifact folder (created on first use)."""
        assert self.artifact_dir is not None
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        return self.artifact_dir

    def job_dir(self, job_id: str) -> Path:
        """Folder holding one job's artifacts (baseline, exported network, result)."""
        path = self.artifacts / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def uploads_dir(self) -> Path:
        """Folder of accepted weight uploads (created on first use)."""
        path = self.artifacts / "uploads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def weights_path(self, upload_id: str) -> Path:
        """Where accepted uploaded weights are: the API writes them, the workers read them."""
        return self.artifacts / "uploads" / f"{upload_id}.safetensors"

    def dataset_upload_dir(self, upload_id: str) -> Path:
        """Folder an uploaded dataset archive is extracted to (``<artifacts>/datasets/<id>``).

        The one place that names it: the API extracts there, the workers read
        from there. Only upload ids (32 hex digits) are accepted, so no id can
        point outside the folder.
        """
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise ValueError(f"not a dataset upload id: {upload_id!r}")
        return self.artifacts / "datasets" / upload_id

    def dataset_dirs(self, name: str) -> list[Path]:
        """Where to look for a dataset's files, in order (DESIGN.md, "JobSpec")."""
        dirs = [self.data_dir / name] if self.data_dir else []
        if self.data_dir:
            dirs.append(self.data_dir)
        return dirs + [d / name for d in SYSTEM_DATA_DIRS]
