"""JobSpec v1: what a user asks for, validated once at the edge.

The spec is stored verbatim (as JSON) on the job row, and the worker tasks
re-validate it from there, so it lives beside the database models: it is the
schema of the ``jobs.spec`` column, shared by the API, the CLI and the
workers without the API importing anything of the workers.

Every field is bounded and every model forbids unknown keys, so a typo is a
422 naming the field instead of a silently ignored option. Options that
later issues add (more samplers) are rejected here until they exist, rather
than accepted and ignored; options that only make sense together (``fold``
needs ``similarity``) are checked here too.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search import catalogue

# The method choices are the catalogue's names: the spec, the OpenAPI enums and
# the dashboard's selects follow it. mypy cannot read a Literal built at run
# time, so it sees plain strings.
if TYPE_CHECKING:
    SamplerName: TypeAlias = str
    CriterionName: TypeAlias = str
    OperatorName: TypeAlias = str
else:
    SamplerName = Literal[tuple(catalogue.SAMPLERS)]
    CriterionName = Literal[tuple(catalogue.CRITERIA)]
    OperatorName = Literal[tuple(catalogue.OPERATORS)]

ARCHS = ("lenet5", "vgg11s", "resnet20", "resnet56", "mobilenetv2", "resnext", "densenet", "regnet")
DATASETS = ("fashion-mnist", "digits", "synthetic", "imagefolder")

Ratio = Annotated[float, Field(gt=0.0, le=1.0)]


def _having(entries: Mapping[str, Any], capability: str) -> str:
    """The names of the catalogue entries with ``capability``, for an error message."""
    return " or ".join(name for name, info in entries.items() if getattr(info, capability))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Users' own networks: installed packages add builders under this entry-point
# group (see workers.nets.zoo); torchvision / timm models are named "torchvision:NAME".
PLUGIN_GROUP = "prunesearch.models"
HUBS = ("torchvision", "timm")
_HUB_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def plugin_architectures() -> tuple[str, ...]:
    """Names installed packages add to the zoo (read from metadata: nothing is imported)."""
    return tuple(sorted({ep.name for ep in entry_points(group=PLUGIN_GROUP)} - set(ARCHS)))


def check_architecture(name: str) -> str:
    """``name`` when a worker with this process's packages can build it.

    The API validates against its own environment; the workers re-validate
    the stored spec against theirs, so a plugin installed on one side only
    fails the job with this same message.

    Raises:
        ValueError: Unknown name, or a ``torchvision:`` / ``timm:`` name whose
            package is not installed.
    """
    if name in ARCHS:
        return name
    hub, sep, model = name.partition(":")
    if sep and hub in HUBS:
        if not _HUB_MODEL.match(model):
            raise ValueError(f"{name!r}: after {hub}: comes a model name such as resnet18")
        if importlib.util.find_spec(hub) is None:
            raise ValueError(f"{name} needs the {hub} package, which is not installed")
        return name
    plugins = plugin_architectures()
    if name in plugins:
        return name
    raise ValueError(
        f"unknown architecture {name!r}; known: {', '.join(ARCHS + plugins)}, or "
        f"torchvision:NAME / timm:NAME where that package is installed"
    )


class ModelSpec(_Strict):
    arch: str = Field(
        default="resnet20",
        min_length=1,
        max_length=200,
        description="lenet5 | vgg11s | resnet20 | resnet56, a name from the prunesearch.models "
        "entry points, or torchvision:NAME / timm:NAME where that package is installed.",
    )
    weights: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="Id of uploaded weights of this arch (POST /v1/weights): the baseline "
        "starts from them and is not pretrained. Null: train the baseline first.",
    )
    pretrain_epochs: int = Field(default=3, ge=0, le=200)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        return check_architecture(value)


class DatasetSpec(_Strict):
    """Which images, at which size, and how they are augmented and normalised.

    ``imagefolder`` reads a class-per-folder tree of PNG/JPEG images, either a
    folder ``path`` under the configured data directory
    (``PRUNESEARCH_DATA_DIR``) or an archive uploaded with ``POST /v1/datasets``
    (``upload``). Its images stream through a DataLoader, so a dataset need
    not fit in memory. ``input_size``, ``channels``, ``augment`` and
    ``mean``/``std`` apply to every dataset; left out, each dataset keeps its
    own (the built-in ones their native 28x28, one channel).
    """

    name: Literal["fashion-mnist", "digits", "synthetic", "imagefolder"] = "fashion-mnist"
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$",
        description="imagefolder: folder relative to the data directory (no '..', not absolute).",
    )
    upload: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="imagefolder: id of a dataset archive uploaded with POST /v1/datasets.",
    )
    subset: int | None = Field(
        default=None, ge=100, le=10_000_000, description="Use only this many training images."
    )
    val_fraction: float = Field(default=0.1, ge=0.01, le=0.5)
    split_seed: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Decides which training images are held out for validation (and the "
        "subset). Default: the job's seed. Fix it to keep a baseline trained elsewhere on one "
        "split (bench/train_baseline.py) from being validated on its own training images.",
    )
    input_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="Side of the square network input: images are resized (shorter side) and "
        "centre-cropped to it. Default: 28 for the built-in sets, 32 for imagefolder.",
    )
    channels: int | None = Field(
        default=None,
        ge=1,
        le=3,
        description="1 (grey) or 3 (RGB): images are converted. Default: 1 for the built-in "
        "sets, 3 for imagefolder.",
    )
    augment: Literal["default", "none", "shift", "crop_flip"] = Field(
        default="default",
        description="Training augmentation. shift: random shift by 2 px (flip where the labels "
        "allow); crop_flip: random crop after padding by size/8, and horizontal flip. "
        "default: shift for the built-in sets, crop_flip for imagefolder.",
    )
    mean: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Per-channel mean in [0, 1] units; computed from the training images "
        "when left out. Give std with it.",
    )
    std: tuple[Annotated[float, Field(gt=0.0, le=10.0)], ...] | None = Field(
        default=None, min_length=1, max_length=3, description="Per-channel std, with mean."
    )
    loader_workers: int = Field(
        default=2, ge=0, le=32, description="imagefolder: DataLoader worker processes."
    )

    @field_validator("channels")
    @classmethod
    def _grey_or_rgb(cls, value: int | None) -> int | None:
        if value == 2:
            raise ValueError("channels must be 1 (grey) or 3 (RGB)")
        return value

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError("path must stay inside the data directory (no '..')")
        return value

    @model_validator(mode="after")
    def _source(self) -> Self:
        if self.name == "imagefolder":
            if (self.path is None) == (self.upload is None):
                raise ValueError("imagefolder needs exactly one of path and upload")
        elif self.path is not None or self.upload is not None:
            raise ValueError(f"path and upload are for imagefolder, not {self.name}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if self.mean is not None and self.channels is not None and len(self.mean) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values (channels)")
        return self

    @property
    def resolved_channels(self) -> int:
        """Image channels the network sees."""
        return self.channels or (3 if self.name == "imagefolder" else 1)

    @property
    def resolved_size(self) -> int:
        """Side of the square input the network sees."""
        return self.input_size or (32 if self.name == "imagefolder" else 28)


class TargetSpec(_Strict):
    flops_ratio: Ratio | None = None
    params_ratio: Ratio | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if self.flops_ratio is None and self.params_ratio is None:
            raise ValueError("give flops_ratio, params_ratio or both")
        return self


class SearchSpec(_Strict):
    sampler: SamplerName = Field(
        default="tpe", description=catalogue.described(catalogue.SAMPLERS) + "."
    )
    n_trials: int = Field(default=40, ge=1, le=10_000)
    granularity: Literal["group", "stage"] = Field(
        default="group",
        description="group: one ratio per channel group; stage: one per resolution stage.",
    )
    population: int | None = Field(
        default=None,
        ge=2,
        le=1_000,
        description="nsga2/genetic generation size; default n_trials/4 within 4..50.",
    )
    objective: Literal["flops_ratio", "params_ratio", "latency_ratio"] = Field(
        default="flops_ratio",
        description="Cost axis of the Pareto front and nsga2's second objective; "
        "latency_ratio is measured on the worker's device.",
    )
    latency_batch: int = Field(
        default=64, ge=1, le=1024, description="Batch size of the latency_ratio objective."
    )
    min_ratio: float = Field(default=0.1, ge=0.01, le=1.0)
    round_to: int = Field(default=1, ge=1, le=64)
    operator: OperatorName = Field(
        default="prune", description=catalogue.described(catalogue.OPERATORS) + "."
    )
    lowrank_slices: int = Field(
        default=1, ge=1, le=8, description="ALDS k: input-channel slices per decomposed conv."
    )
    criterion: CriterionName = Field(
        default="l1", description=catalogue.described(catalogue.CRITERIA) + "."
    )
    criterion_batches: int = Field(
        default=4, ge=1, le=100, description="Calibration batches of the data criteria."
    )
    fold: bool = Field(
        default=False, description="similarity: fold removed channels into their kept twins."
    )
    push_steps: int = Field(
        default=0, ge=0, le=10_000, description="discriminant: steps of discriminant push first."
    )
    push_weight: float = Field(default=0.1, ge=0.0, le=10.0)
    masking: Literal["static", "dynamic"] = "static"
    mask_every: int = Field(
        default=50, ge=1, le=10_000, description="dynamic: steps between mask recomputations."
    )
    reconstruct: bool = Field(
        default=False, description="Least-squares refit of the next layers after pruning."
    )
    repair: bool = Field(
        default=True,
        description="Move every proposal onto the budget; when false, over-budget candidates "
        "are scored with the FLOPs-aware penalty instead.",
    )
    flops_lambda: float = Field(
        default=1.0, ge=0.0, le=100.0, description="lambda of accuracy - lambda*max(0, fill-1)."
    )

    @model_validator(mode="after")
    def _compatible(self) -> Self:
        criterion, operator = catalogue.criterion(self.criterion), catalogue.operator(self.operator)
        if self.fold and not criterion.folds:
            raise ValueError(f"fold needs criterion {_having(catalogue.CRITERIA, 'folds')}")
        if self.push_steps and not criterion.pushes:
            raise ValueError(f"push_steps needs criterion {_having(catalogue.CRITERIA, 'pushes')}")
        channels_only = " or ".join(n for n, o in catalogue.OPERATORS.items() if not o.decomposes)
        if catalogue.sampler(self.sampler).needs_channels and operator.decomposes:
            raise ValueError(
                f"sampler {self.sampler} allocates channels: it needs operator {channels_only}"
            )
        if self.masking == "dynamic" and operator.decomposes:
            raise ValueError(f"masking dynamic works with operator {channels_only} only")
        if self.masking == "dynamic" and self.reconstruct:
            raise ValueError(
                "reconstruct works with masking static only (dynamic masks prune "
                "after the fine-tune, when there is nothing left to reconstruct)"
            )
        return self


class ScoringSpec(_Strict):
    mode: Literal["adaptive_bn", "finetune"] = "adaptive_bn"
    calib_batches: int = Field(default=20, ge=1, le=1_000)
    finetune_steps: int = Field(
        default=0, ge=0, le=100_000, description="SGD steps before validation (mode finetune)."
    )
    distill: bool = Field(default=False, description="Distil from the baseline while fine-tuning.")
    promote_top_k: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Ladder: the k best candidates get a short fine-tune before the winner "
        "is chosen (0: choose by the search score alone).",
    )
    promote_steps: int = Field(
        default=50, ge=1, le=100_000, description="SGD steps of the ladder's short fine-tune."
    )

    @model_validator(mode="after")
    def _steps_for_finetune(self) -> Self:
        if self.mode == "finetune" and self.finetune_steps == 0:
            raise ValueError("mode finetune needs finetune_steps > 0")
        return self


class FinalSpec(_Strict):
    finetune_epochs: float = Field(default=1.0, ge=0.0, le=200.0)
    distill: bool = Field(default=False, description="Distil from the baseline while fine-tuning.")


class DistillSpec(_Strict):
    """Knowledge distillation from the unpruned baseline, for every distilled fine-tune."""

    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Share of the KD term; the rest is cross-entropy."
    )


class TriageSpec(_Strict):
    """Deep Net Triage report; ``triage: true`` is shorthand for ``{enabled: true}``."""

    enabled: bool = False
    ratios: tuple[Ratio, ...] = Field(
        default=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        min_length=1,
        max_length=19,
        description="Keep ratios of the sensitivity curves.",
    )
    blocks: bool = Field(default=True, description="Also collapse each block (costs fine-tunes).")
    block_steps: int = Field(default=100, ge=1, le=100_000)
    narrow: bool = Field(default=True, description="Narrow ratio bounds from the curves.")
    tolerance: float = Field(
        default=0.02, gt=0.0, le=1.0, description="Accuracy drop that counts as sensitive."
    )
    seed_trials: int = Field(default=2, ge=0, le=20, description="First trials seeded from it.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data


class TrainSpec(_Strict):
    batch_size: int = Field(default=128, ge=8, le=4096)
    lr: float = Field(default=0.05, gt=0.0, le=10.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=0.1)


class LimitsSpec(_Strict):
    """Wall-clock limits, so that a search left overnight ends whatever it meets."""

    trial_s: float = Field(
        default=3600.0,
        ge=1.0,
        le=86_400.0,
        description="A trial scoring longer is stopped and recorded failed; the search goes on.",
    )
    search_s: float | None = Field(
        default=None,
        ge=1.0,
        le=7 * 86_400.0,
        description="After this long searching, the remaining trials are skipped and the best "
        "candidate found so far is fine-tuned.",
    )


class JobSpec(_Strict):
    """The whole request for one search job (see DESIGN.md, "JobSpec")."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    target: TargetSpec
    search: SearchSpec = SearchSpec()
    scoring: ScoringSpec = ScoringSpec()
    final: FinalSpec = FinalSpec()
    distillation: DistillSpec = DistillSpec()
    triage: TriageSpec = TriageSpec()
    train: TrainSpec = TrainSpec()
    limits: LimitsSpec = LimitsSpec()
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
