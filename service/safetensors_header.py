"""Read a safetensors file's header without torch, and refuse anything that is not one.

Uploaded weights are checked here, in the API process, before anything is
stored: the process never imports torch, and a file that is not exactly a
safetensors file must be refused before any worker opens it. The format
(https://github.com/huggingface/safetensors) is small enough to check in
full: 8 bytes of little-endian header length ``N``, ``N`` bytes of a JSON
object (UTF-8, possibly padded with spaces), then the data buffer. Each
tensor's ``data_offsets`` are relative to the start of the buffer; they must
match its dtype and shape, must not overlap, and must together cover the
buffer exactly, as the reference implementation demands. Nothing is ever
unpickled or executed; pickle and zip files (what ``torch.save`` writes)
are recognised to say so plainly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The reference reader accepts up to 100 MB; a header that large would cost the
# API process a gigabyte of JSON objects, and 16 MiB already describes hundreds
# of thousands of tensors.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_DIMS = 64
METADATA = "__metadata__"

DTYPE_BYTES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOATING = frozenset({"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"})
INTEGER = frozenset({"U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})


class HeaderError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor: its dtype (safetensors name) and shape."""

    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


def _sniff(head: bytes) -> str | None:
    """A plain word for well-known formats that are not safetensors."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return (
            "a zip archive (what torch.save writes), not safetensors; save the state_dict "
            "with safetensors.torch.save_file(model.state_dict(), path)"
        )
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return (
            "a Python pickle (legacy torch.save or pickle.dump), not safetensors; pickles "
            "are never loaded here because unpickling can run code"
        )
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise HeaderError(f"the header names {key!r} twice")
        seen[key] = value
    return seen


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor(name: str, entry: Any) -> tuple[TensorInfo, int, int]:
    """One header entry, checked on its own: (info, begin, end)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor {name!r}: expected exactly the keys dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise HeaderError(f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end")
    begin, end = offsets
    need = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != need:
        raise HeaderError(
            f"tensor {name!r}: data_offsets span {end - begin} bytes but {dtype} "
            f"{shape} needs {need}"
        )
    return TensorInfo(dtype, tuple(shape)), begin, end


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file holds, after checking the whole layout.

    Only the header is read; the data buffer is checked by its length, which
    the offsets must account for exactly (so a truncated or padded file, or
    overlapping tensors, are refused).

    Raises:
        HeaderError: Anything that makes the file not a valid safetensors file.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
        length = int.from_bytes(head[:8], "little")
        # A valid length can begin with a pickle's magic bytes (0x80 0x05 is 1408),
        # so other formats are named only when the header does not look right.
        if len(head) < 9 or length > size - 8 or head[8:9] != b"{":
            other = _sniff(head)
            if other is not None:
                raise HeaderError(f"this is {other}")
        if len(head) < 8:
            raise HeaderError(f"truncated: {size} bytes, less than the 8-byte header length")
        f.seek(8)
        if length > size - 8:
            raise HeaderError(
                f"the header length field says {length} bytes but only {size - 8} follow "
                "(truncated, or not a safetensors file)"
            )
        if length > MAX_HEADER_BYTES:
            raise HeaderError(
                f"the header length {length} is over the {MAX_HEADER_BYTES}-byte limit"
            )
        raw = f.read(length)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(f"the header is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not text.startswith("{"):
        raise HeaderError("the header is not a JSON object (it must start with '{')")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except HeaderError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's 4300 digits
        raise HeaderError(f"the header is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise HeaderError("the header nests too deeply") from exc
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object")

    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(f"{METADATA} must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, begin, end = _tensor(name, entry)
        tensors[name] = info
        spans.append((begin, end, name))

    data_bytes = size - 8 - length
    position = 0
    for begin, end, name in sorted(spans):
        if begin < position:
            raise HeaderError(f"tensor {name!r} overlaps the tensor before it (offset {begin})")
        if begin > position:
            raise HeaderError(f"{begin - position} unused bytes before tensor {name!r}")
        position = end
    if position > data_bytes:
        raise HeaderError(
            f"truncated: the tensors need {position} bytes of data but the file holds {data_bytes}"
        )
    if position < data_bytes:
        raise HeaderError(f"{data_bytes - position} bytes after the last tensor")
    return tensors
