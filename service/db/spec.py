"""JobSpec v1: what a user asks for, validated once at the edge.

The spec is stored verbatim (as JSON) on the job row, and the worker tasks
re-validate it from there, so it lives beside the database models: it is the
schema of the ``jobs.spec`` column, shared by the API, the CLI and the
workers without the API importing anything of the workers.

Every field is bounded and every model forbids unknown keys, so a typo is a
422 naming the field instead of a silently ignored option. Options that
later issues add (other criteria, dynamic masks, distillation, uploaded
weights) are rejected here until they exist, rather than accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

ARCHS = ("lenet5", "vgg11s", "resnet20", "resnet56")
DATASETS = ("fashion-mnist", "digits", "synthetic")
SAMPLERS = ("tpe", "random", "uniform")

Ratio = Annotated[float, Field(gt=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    arch: Literal["lenet5", "vgg11s", "resnet20", "resnet56"] = "resnet20"
    weights: None = Field(
        default=None,
        description="Uploaded weights id; only null (train the baseline) is accepted until "
        "uploads exist.",
    )
    pretrain_epochs: int = Field(default=3, ge=0, le=200)


class DatasetSpec(_Strict):
    name: Literal["fashion-mnist", "digits", "synthetic"] = "fashion-mnist"
    subset: int | None = Field(
        default=None, ge=100, le=10_000_000, description="Use only this many training images."
    )
    val_fraction: float = Field(default=0.1, ge=0.01, le=0.5)


class TargetSpec(_Strict):
    flops_ratio: Ratio | None = None
    params_ratio: Ratio | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if self.flops_ratio is None and self.params_ratio is None:
            raise ValueError("give flops_ratio, params_ratio or both")
        return self


class SearchSpec(_Strict):
    sampler: Literal["tpe", "random", "uniform"] = "tpe"
    n_trials: int = Field(default=40, ge=1, le=10_000)
    min_ratio: float = Field(default=0.1, ge=0.01, le=1.0)
    criterion: Literal["l1", "l2"] = "l1"
    masking: Literal["static"] = "static"
    round_to: int = Field(default=1, ge=1, le=64)


class ScoringSpec(_Strict):
    mode: Literal["adaptive_bn", "finetune"] = "adaptive_bn"
    calib_batches: int = Field(default=20, ge=1, le=1_000)
    finetune_steps: int = Field(
        default=0, ge=0, le=100_000, description="SGD steps before validation (mode finetune)."
    )

    @model_validator(mode="after")
    def _steps_for_finetune(self) -> Self:
        if self.mode == "finetune" and self.finetune_steps == 0:
            raise ValueError("mode finetune needs finetune_steps > 0")
        return self


class FinalSpec(_Strict):
    finetune_epochs: float = Field(default=1.0, ge=0.0, le=200.0)
    distill: Literal[False] = False


class TrainSpec(_Strict):
    batch_size: int = Field(default=128, ge=8, le=4096)
    lr: float = Field(default=0.05, gt=0.0, le=10.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=0.1)


class JobSpec(_Strict):
    """The whole request for one search job (see DESIGN.md, "JobSpec")."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    target: TargetSpec
    search: SearchSpec = SearchSpec()
    scoring: ScoringSpec = ScoringSpec()
    final: FinalSpec = FinalSpec()
    train: TrainSpec = TrainSpec()
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
