"""Errors of the workers package; every one derives from :class:`WorkerError`.

The service converts these into job failures with a readable reason, so each
message says what went wrong *and* what the user can do about it.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of everything the workers raise on purpose."""


class UnknownArchitecture(WorkerError):
    """An architecture name that the model zoo does not provide."""


class DatasetNotFound(WorkerError):
    """A dataset's files are in none of the folders that were searched."""


class PruneError(WorkerError):
    """Channel counts or kept indices that do not fit the network's groups."""


class ProfileBuildError(WorkerError):
    """The network contains a layer the exact cost model cannot express."""


class ExportError(WorkerError):
    """An exported network cannot be written, or its files cannot be trusted."""


class DatasetInvalid(DatasetNotFound):
    """A dataset's folder is there but unusable: its layout, its classes or an image.

    A subclass of :class:`DatasetNotFound` so that whoever handles a missing
    dataset also handles one that cannot be used.
    """


class ImageUnreadable(DatasetInvalid):
    """One image file of a dataset cannot be decoded; the message names the file."""


class StructureError(WorkerError):
    """A network that cannot be searched as given, found before any training.

    ``kind`` is ``"shape"`` when its forward does not fit the dataset's images
    or classes, and ``"structure"`` when the pruner or the exact cost model
    cannot follow one of its layers.
    """

    def __init__(self, message: str, *, kind: str = "structure") -> None:
        super().__init__(message)
        self.kind = kind
