"""Dynamic channel masks: prune softly while fine-tuning, then freeze and cut.

AutoPruning (Li et al. 2020, arXiv:2010.12021) keeps, for each group, the
top ``n_g`` channels by a criterion *recomputed from the current weights* as
training goes, so a channel dropped early can come back once it has become
important. :class:`DynamicMasks` does that inside an ordinary
:func:`workers.nets.train.fit` run::

    with DynamicMasks(model, groups, counts, select, every=50) as masks:
        train.fit(model, split, steps=300, on_step=masks.on_step)
    prune.apply_kept(model, masks.kept, example_inputs)

Where the mask acts. A masked channel is zeroed where it is *read*: at the
input of every conv/linear layer that consumes the group's channels (for a
residual group, every block's first conv, the projection shortcuts and the
classifier). Zeroing where it is *produced* (the conv or BN output) does
not work: a ReLU follows, and a ReLU passes no gradient where its input is
zero, so the masked channel would never learn again; a BN fed an all-zero
channel in train mode would also divide by ``sqrt(eps)`` in its backward
pass and store meaningless statistics. Reading-side masks leave the
producers, the activations and the BN statistics of a masked channel alive,
and since a channel reaches the output only through the layers that read
it, the masked network computes exactly what the physically pruned one does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from workers.compress.profiling import ChannelGroup
from workers.errors import PruneError

# Current kept channel indices per group name, recomputed from the model's current weights.
Select = Callable[[], dict[str, list[int]]]


class _StraightThrough(torch.autograd.Function):
    """``x * mask`` forward, identity backward.

    The straight-through mask is what lets a masked channel come back: the
    layers that produce it receive the gradient they would receive if it
    were alive, so its weights keep training (weight decay, applied by the
    optimiser to every weight, still shrinks them) and it can win its place
    back at the next update. Exact: ``x * 0 == 0`` and ``x * 1 == x``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor) -> Tensor:
        return x * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


@dataclass(frozen=True)
class _Reader:
    """Where one group's channels enter one consumer's input.

    Attributes:
        consumer: Index into :attr:`DynamicMasks._consumers`.
        positions: Input indices (channels, or features after a flatten).
        channels: The group channel each position carries.
    """

    consumer: int
    positions: Tensor
    channels: Tensor


class DynamicMasks:
    """Channel masks recomputed during training; a context manager.

    ``__enter__`` computes the first choice and installs the masks;
    :meth:`on_step` (passed to ``train.fit(on_step=...)``) recomputes them
    every ``every`` steps; ``__exit__`` freezes the choice in :attr:`kept` and
    removes every hook, so the model is unmasked again and the caller prunes
    it physically with ``prune.apply_kept(model, masks.kept, example_inputs)``.

    Args:
        model: The unpruned network ``groups`` were built from.
        groups: Its channel groups (:func:`workers.compress.profiling.channel_groups`).
        counts: Channels to keep per group, in ``groups`` order.
        select: Returns the kept indices per group name from the current
            weights (the caller builds it from the job's criterion); must
            return exactly ``counts[g]`` distinct indices for every group.
        every: Steps between recomputations.

    Raises:
        PruneError: Counts that do not fit the groups, or a group whose
            channels are read by a layer the masks cannot handle.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        counts: Sequence[int],
        select: Select,
        *,
        every: int = 50,
    ) -> None:
        if every < 1:
            raise PruneError(f"masks must be recomputed every >= 1 steps, got {every}")
        if len(counts) != len(groups):
            raise PruneError(f"expected {len(groups)} channel counts, got {len(counts)}")
        for g, n in zip(groups, counts, strict=True):
            if not 1 <= int(n) <= g.units:
                raise PruneError(f"group {g.name}: cannot keep {n} of {g.units} channels")
        self._groups = list(groups)
        # Channels kept: counts are per part where grouped convs cut a group in parts.
        self._counts = {g.name: int(n) * g.slices for g, n in zip(groups, counts, strict=True)}
        self._select = select
        self.every = int(every)
        self._consumers: list[tuple[nn.Module, int, int]] = []  # (module, dim, width)
        self._readers = {g.name: _find_readers(model, g, self._consumers) for g in self._groups}
        self._masks: list[Tensor] = []
        self._handles: list[RemovableHandle] = []
        self._kept: dict[str, list[int]] = {}
        self._swaps = 0
        self._updates = 0
        self._state = "new"

    @property
    def kept(self) -> dict[str, list[int]]:
        """Kept channel indices per group name (sorted); frozen once the context exits."""
        return {name: list(idxs) for name, idxs in self._kept.items()}

    @property
    def swaps(self) -> int:
        """Channels that entered the kept set at a recomputation (each evicts one).

        Non-zero is the evidence that a dropped channel came back.
        """
        return self._swaps

    @property
    def updates(self) -> int:
        """How many times the masks were computed (the first one included)."""
        return self._updates

    def __enter__(self) -> DynamicMasks:
        if self._state != "new":
            raise PruneError("a DynamicMasks context can be entered only once")
        self._state = "active"
        try:
            self._handles = [
                module.register_forward_pre_hook(self._hook(i))
                for i, (module, _, _) in enumerate(self._consumers)
            ]
            self.update()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def on_step(self, step: int, loss: float) -> None:
        """Training callback: recompute the masks every :attr:`every` steps."""
        if step % self.every == 0:
            self.update()

    def update(self) -> None:
        """Recompute the kept channels from the current weights and install them now."""
        if self._state != "active":
            raise PruneError(
                f"masks can only be updated inside the context (they are {self._state})"
            )
        with torch.no_grad():
            chosen = self._checked(self._select())
        if self._kept:
            self._swaps += sum(len(set(chosen[n]) - set(self._kept[n])) for n in chosen)
        self._kept = chosen
        self._updates += 1
        masks = [torch.ones(width) for _, _, width in self._consumers]
        for g in self._groups:
            alive = torch.zeros(g.channels)
            alive[chosen[g.name]] = 1.0
            for r in self._readers[g.name]:
                masks[r.consumer][r.positions] = alive[r.channels]
        # Keep each mask where the model ran last, so the hooks move nothing.
        if self._masks:
            masks = [new.to(old) for new, old in zip(masks, self._masks, strict=True)]
        self._masks = masks

    def _checked(self, chosen: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        if set(chosen) != set(self._counts):
            raise PruneError(
                f"select returned groups {sorted(chosen)}, expected {sorted(self._counts)}"
            )
        clean: dict[str, list[int]] = {}
        for g in self._groups:
            idxs = sorted(int(i) for i in chosen[g.name])
            if len(idxs) != self._counts[g.name] or len(set(idxs)) != len(idxs):
                raise PruneError(
                    f"select kept {len(idxs)} channels of group {g.name} "
                    f"(need {self._counts[g.name]} distinct)"
                )
            if idxs[0] < 0 or idxs[-1] >= g.channels:
                raise PruneError(f"group {g.name}: kept indices must be in 0..{g.channels - 1}")
            clean[g.name] = idxs
        return clean

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        dim, width = self._consumers[index][1:]

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            if x.shape[dim] != width:
                raise PruneError(f"masked layer expected {width} input channels, got {x.shape}")
            mask = self._masks[index]
            if mask.device != x.device or mask.dtype != x.dtype:
                mask = self._masks[index] = mask.to(device=x.device, dtype=x.dtype)
            shape = [1] * x.ndim
            shape[dim] = width
            return (_StraightThrough.apply(x, mask.view(shape)), *args[1:])

        return hook

    def _close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._state = "frozen"


_LINEAR_LIKE = (nn.Linear,)
_CONV_LIKE = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CHANNEL_LOCAL = (nn.modules.batchnorm._BatchNorm,)


def _find_readers(
    model: nn.Module, g: ChannelGroup, consumers: list[tuple[nn.Module, int, int]]
) -> list[_Reader]:
    """Every place where group ``g``'s channels are read, registering new consumers.

    Uses the dependency group's in-channel items: their ``idxs`` are input
    positions of the consumer and ``root_idxs`` the group channel each
    carries, which covers a linear layer fed by a flattened map (several
    positions per channel) and concatenations (an offset) alike.
    """
    named = {module for _, module in model.named_modules()}
    index = {id(module): i for i, (module, _, _) in enumerate(consumers)}
    dg = g.group._DG
    found: list[_Reader] = []
    for item in g.group.items:
        module = item.dep.target.module
        if module not in named or isinstance(module, _CHANNEL_LOCAL):
            continue
        if not dg.is_in_channel_pruning_fn(item.dep.handler) or dg.is_out_channel_pruning_fn(
            item.dep.handler
        ):
            continue
        if isinstance(module, _CONV_LIKE):
            dim, width = 1, int(module.in_channels)
        elif isinstance(module, _LINEAR_LIKE):
            dim, width = -1, int(module.in_features)
        else:
            raise PruneError(
                f"group {g.name}: cannot mask the input of {type(module).__name__} layers"
            )
        if item.root_idxs is None or len(item.root_idxs) != len(item.idxs):
            raise PruneError(f"group {g.name}: cannot map a consumer's inputs to its channels")
        if id(module) not in index:
            index[id(module)] = len(consumers)
            consumers.append((module, dim, width))
        found.append(
            _Reader(
                index[id(module)],
                torch.tensor([int(i) for i in item.idxs], dtype=torch.long),
                torch.tensor([int(i) for i in item.root_idxs], dtype=torch.long),
            )
        )
    if not found:
        raise PruneError(f"group {g.name}: no layer reads its channels, nothing to mask")
    return found
