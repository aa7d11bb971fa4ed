"""Import torchvision or timm, and say what to do when the build does not match torch.

torchvision ships compiled operators built against one torch release and one
CUDA version. Installed from a different build than torch (a CUDA
torchvision from PyPI next to a CPU torch, say) its import fails with
errors such as ``RuntimeError: operator torchvision::nms does not exist``,
which tell a user nothing about the fix. timm imports torchvision, so it
fails the same way. :func:`import_hub` turns such a failure into a message
that names both versions and the matching pair to install.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

import torch

from workers.errors import UnknownArchitecture

GIST_CHARS = 200
WHEELS = "https://download.pytorch.org/whl"


def import_hub(name: str) -> ModuleType:
    """``import name``, with an import failure explained (see :func:`import_failure`).

    Raises:
        UnknownArchitecture: The package is not installed, or cannot be
            imported here; the message says which versions to install.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise UnknownArchitecture(
                f"{name} models need the {name} package, which is not installed here: "
                f"pip install {name}"
            ) from exc
        raise UnknownArchitecture(import_failure(name, exc)) from exc
    except Exception as exc:
        raise UnknownArchitecture(import_failure(name, exc)) from exc


def import_failure(name: str, exc: BaseException) -> str:
    """Why importing ``name`` failed with ``exc``, and the install that fixes it.

    A failure that involves torchvision (its own import, or timm's import of
    it) is a build mismatch with torch, by far the usual cause; anything else
    is reported as a release of ``name`` that does not support this torch.
    """
    gist = _gist(exc)
    torch_version = str(torch.__version__)
    if (
        name == "torchvision"
        or "torchvision" in gist
        or "torchvision" in str(getattr(exc, "name", "") or "")
    ):
        tv = _installed("torchvision")
        who = "" if name == "torchvision" else f"{name} needs torchvision, but "
        return (
            f"{who}torchvision{tv} cannot be imported with torch {torch_version} installed here "
            f"({gist}): torchvision and torch must come from the same build (CPU or the same "
            f"CUDA version); install matching versions, e.g. {_matching_install(torch_version)}"
        )
    return (
        f"{name}{_installed(name)} cannot be imported with torch {torch_version} installed here "
        f"({gist}): install a {name} release that supports this torch (pip install -U {name})"
    )


def _installed(name: str) -> str:
    """`` 0.x.y`` for an installed distribution, read from its metadata (no import)."""
    try:
        return f" {version(name)}"
    except PackageNotFoundError:
        return ""


def _matching_install(torch_version: str) -> str:
    """A pip command for torch and the torchvision release paired with it.

    torchvision's minor version follows torch's: 0.(minor + 1) for torch 1.x,
    0.(minor + 15) for torch 2.x. A local build label (``+cpu``, ``+cu121``)
    names the PyTorch wheel index of that build.
    """
    base, _, label = torch_version.partition("+")
    match = re.match(r"(\d+)\.(\d+)", base)
    if match is None:
        return "pip install torch torchvision (the same build as torch)"
    major, minor = int(match.group(1)), int(match.group(2))
    tv_minor = minor + 15 if major == 2 else minor + 1
    command = f"pip install torch=={base} torchvision==0.{tv_minor}.*"
    if label:
        command += f" --index-url {WHEELS}/{label}"
    return command


def _gist(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= GIST_CHARS else text[: GIST_CHARS - 3] + "..."
