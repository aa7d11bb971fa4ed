"""Reading an uploaded archive (.zip, .tar, .tar.gz) without trusting a byte of it.

:func:`open_archive` checks the whole member list before anything is written:
names (no ``..``, absolute paths, drive letters, backslashes, control
characters, duplicates or names equal but for case), types (regular files
and folders only: no links, devices, FIFOs, encrypted members), the member
count, and sizes (a total and a per-member cap, and a compression-ratio cap,
from the headers). :meth:`Archive.extract` then writes the chosen members
into a fresh folder with ``O_EXCL | O_NOFOLLOW``, counting bytes, because
headers can lie. Nothing here unpacks via ``extractall``.

A gzip stream is inflated first into a scratch file, counted, so a gzip bomb
stops at the cap; the zip central directory is counted before :mod:`zipfile`
builds an object per entry. Every refusal is :class:`ArchiveRefused` (422 on
``file``) with a message that names the member; the caller removes what was
written. The dataset rules (layout, images) are :mod:`service.datasets`'.
"""

from __future__ import annotations

import gzip
import itertools
import lzma
import os
import re
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar, cast

from core.errors import ArchiveRefused

T = TypeVar("T")
CHUNK = 1 << 20
MAX_READ = 4 << 20  # one read of a tar's own metadata (a long name, a pax header)
MAX_DEPTH = 8
RATIO_FLOOR = 1 << 20  # smaller members (and gzip streams) are not held to the ratio cap
JUNK_FOLDERS = frozenset({"__MACOSX"})
JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
OTHER_FORMATS = {  # magic bytes of archives we do not read, to say what was sent
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!\x1a\x07": "rar",
    b"\x28\xb5\x2f\xfd": "zstd",
}
ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, 14})
CORRUPT = (
    zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError, zlib.error,
    lzma.LZMAError, NotImplementedError, RuntimeError, struct.error,
)  # fmt: skip


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold; checked from the headers and again while extracting."""

    max_unpacked_bytes: int = 8 << 30
    max_member_bytes: int = 64 << 20
    max_members: int = 500_000
    max_ratio: int = 100  # uncompressed : compressed, per zip member and for a gzip stream


@dataclass(frozen=True)
class Member:
    """A regular file of the archive: its name as stored, its checked path, its declared size."""

    name: str
    parts: tuple[str, ...]
    size: int
    ref: Any  # the ZipInfo or TarInfo


def refuse(message: str) -> ArchiveRefused:
    return ArchiveRefused(message)


def _mib(n: int) -> str:
    return f"{n / 2**20:.4g} MiB"


def check_name(name: str) -> tuple[str, ...]:
    """The path components of a member name, refusing anything that could leave the folder."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise refuse(f"{name!r}: a control character in the name")
    if "\\" in name:
        raise refuse(f"{name!r}: a backslash in the name (a Windows path?)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise refuse(f"{name!r}: the name is not valid UTF-8") from exc
    if name.startswith("/"):
        raise refuse(f"{name!r}: an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise refuse(f"{name!r}: a path that leaves the archive (..)")
    if parts and re.match(r"^[A-Za-z]:", parts[0]):
        raise refuse(f"{name!r}: a Windows drive letter")
    if len(parts) > MAX_DEPTH or any(len(p.encode()) > 255 for p in parts):
        raise refuse(f"{name!r}: nested over {MAX_DEPTH} deep or a name over 255 bytes")
    return parts


def is_junk(parts: tuple[str, ...]) -> bool:
    """Operating-system leftovers (Finder, Explorer) that are skipped, not refused."""
    return bool(parts) and (
        any(p in JUNK_FOLDERS for p in parts)
        or parts[-1] in JUNK_FILES
        or parts[-1].startswith("._")
    )


def _fold(parts: tuple[str, ...]) -> str:
    return unicodedata.normalize("NFC", "/".join(parts)).casefold()


@contextmanager
def _corrupt(what: str) -> Iterator[None]:
    """Errors of the archive libraries (not our own) as a refusal naming ``what``."""
    try:
        yield
    except CORRUPT as exc:
        raise refuse(f"{what}: a corrupt or truncated archive ({exc})") from exc


class Archive:
    """The checked member list of an open archive; :meth:`extract` writes chosen members."""

    def __init__(
        self,
        files: list[Member],
        dirs: list[tuple[str, ...]],
        opener: Callable[[Member], IO[bytes]],
    ) -> None:
        self.files = files
        self.dirs = dirs
        self._opener = opener

    def extract(
        self,
        plan: list[tuple[Member, tuple[str, ...]]],
        dest: Path,
        check: Callable[[Path, Member], T],
    ) -> list[T]:
        """Write each member to ``dest/<parts>`` (``dest`` is created) and ``check`` it there.

        Raises:
            ArchiveRefused: A member holds more or fewer bytes than its header says, or
                cannot be read; or whatever ``check`` raises.
        """
        dest.mkdir()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        results = []
        for member, parts in plan:
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with _corrupt(repr(member.name)):
                src = self._opener(member)
            with src, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                while True:
                    with _corrupt(repr(member.name)):
                        chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > member.size:
                        raise refuse(f"{member.name!r}: more bytes than its header says")
                    out.write(chunk)
            if written != member.size:
                raise refuse(f"{member.name!r}: truncated ({written} of {member.size} bytes)")
            results.append(check(target, member))
        return results


def archive_kind(head: bytes) -> str | None:
    """``zip``, ``gzip``, ``tar`` or another archive format's name from the first 512 bytes."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head[257:262] == b"ustar" or (len(head) == 512 and not any(head)):
        return "tar"  # a POSIX/GNU header, or the end-of-archive blocks of an empty tar
    return next((name for magic, name in OTHER_FORMATS.items() if head.startswith(magic)), None)


@contextmanager
def open_archive(path: Path, limits: ArchiveLimits, scratch: Path) -> Iterator[Archive]:
    """Open ``path`` and check its member list; a gzip stream is inflated to ``scratch``.

    Raises:
        ArchiveRefused: An unknown format, a corrupt archive, or a member or total over
            the limits (see the module docstring).
    """
    with path.open("rb") as f:
        kind = archive_kind(f.read(512))
    with ExitStack() as stack:
        if kind == "gzip":
            stack.callback(scratch.unlink, missing_ok=True)
            _gunzip(path, scratch, limits)
            with scratch.open("rb") as f:
                inner = archive_kind(f.read(512))
            if inner != "tar":
                what = f"a nested {inner} archive" if inner else "no tar archive"
                raise refuse(f"the gzip stream holds {what}: send a .tar.gz of the folder")
            path, kind = scratch, "tar"
        if kind == "zip":
            archive = _zip(stack, path, limits)
        elif kind == "tar":
            archive = _tar(stack, path, limits)
        else:
            known = f" (it looks like {kind})" if kind else ""
            raise refuse(f"unknown archive format{known}: send a .zip, .tar, .tar.gz or .tgz")
        _check_members(archive, limits)
        yield archive


def _gunzip(src: Path, dst: Path, limits: ArchiveLimits) -> None:
    cap = min(limits.max_unpacked_bytes, max(limits.max_ratio * src.stat().st_size, RATIO_FLOOR))
    out = 0
    with gzip.open(src, "rb") as stream, dst.open("xb") as sink:
        while True:
            with _corrupt("the gzip stream"):
                chunk = stream.read(CHUNK)
            if not chunk:
                break
            out += len(chunk)
            if out > limits.max_unpacked_bytes:
                raise refuse(f"unpacks to over {_mib(limits.max_unpacked_bytes)}, the limit")
            if out > cap:
                raise refuse(f"the gzip stream inflates over {limits.max_ratio}:1 (a gzip bomb?)")
            sink.write(chunk)


def _zip_entries(f: BinaryIO) -> Iterator[None]:
    """One item per entry of the central directory, read before :mod:`zipfile` parses it."""
    end = f.seek(0, os.SEEK_END)
    f.seek(max(0, end - 65_557))
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return  # not a zip: zipfile says why
    size, record = struct.unpack_from("<I", tail, at + 12)[0], end - len(tail) + at
    if tail[max(0, at - 20) : at - 16] == b"PK\x06\x07":  # zip64: its own end record
        (record,) = struct.unpack_from("<Q", tail, at - 12)
        f.seek(record)
        (size,) = struct.unpack_from("<Q", f.read(56).ljust(56, b"\0"), 40)
    f.seek(max(0, record - size))
    while (head := f.read(46)).startswith(b"PK\x01\x02") and len(head) == 46:
        yield None
        f.seek(sum(struct.unpack_from("<HHH", head, 28)), os.SEEK_CUR)


def _zip(stack: ExitStack, path: Path, limits: ArchiveLimits) -> Archive:
    with path.open("rb") as f:
        for count, _ in enumerate(_zip_entries(f), 1):
            if count > limits.max_members:
                raise refuse(f"over {limits.max_members} members")
    with _corrupt("the zip directory"):
        zf = stack.enter_context(zipfile.ZipFile(path))
    if len(zf.infolist()) > limits.max_members:  # a directory our count misread
        raise refuse(f"over {limits.max_members} members")
    files, dirs, ends = [], [], []
    for info in zf.infolist():
        name, mode = info.orig_filename, info.external_attr >> 16
        parts = check_name(name)
        if stat.S_ISLNK(mode):
            raise refuse(f"{name!r}: a symbolic link")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise refuse(f"{name!r}: a special file (device, FIFO or socket)")
        if info.flag_bits & 0x1:
            raise refuse(f"{name!r}: encrypted")
        if info.compress_type not in ZIP_METHODS:
            raise refuse(f"{name!r}: compression method {info.compress_type} is not supported")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > limits.max_ratio:
            raise refuse(
                f"{name!r}: compressed {ratio:.0f}:1, over {limits.max_ratio}:1 (a zip bomb?)"
            )
        ends.append((info.header_offset, info.header_offset + 30 + info.compress_size))
        if info.is_dir() or stat.S_ISDIR(mode):
            if info.file_size:
                raise refuse(f"{name!r}: a folder entry that holds data")
            dirs.append(parts)
        else:
            files.append(Member(name, parts, info.file_size, info))
    ends.sort()
    if any(nxt[0] < end for (_, end), nxt in itertools.pairwise(ends)):
        raise refuse("members overlap each other (a zip bomb?)")
    return Archive(files, dirs, lambda m: zf.open(m.ref))


class _Guard:
    """A tar file as :mod:`tarfile` reads it, refusing any one read of a huge metadata block."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_READ:
            raise refuse(f"a tar header with {size} bytes of metadata (long name or pax)")
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _tar(stack: ExitStack, path: Path, limits: ArchiveLimits) -> Archive:
    raw = stack.enter_context(path.open("rb"))
    with _corrupt("the tar headers"):
        tf = stack.enter_context(tarfile.TarFile(fileobj=cast(IO[bytes], _Guard(raw))))
    files, dirs, count = [], [], 0
    while True:
        with _corrupt("the tar headers"):
            info = tf.next()
        if info is None:
            break
        count += 1
        if count > limits.max_members:
            raise refuse(f"over {limits.max_members} members")
        name = info.name
        parts = check_name(name)
        if info.issym():
            raise refuse(f"{name!r}: a symbolic link (to {info.linkname!r})")
        if info.islnk():
            raise refuse(f"{name!r}: a hard link (to {info.linkname!r})")
        if info.ischr() or info.isblk():
            raise refuse(f"{name!r}: a device file")
        if info.isfifo():
            raise refuse(f"{name!r}: a FIFO")
        if info.issparse() or not (info.isreg() or info.isdir()):
            raise refuse(f"{name!r}: a tar entry of type {info.type!r} (only files and folders)")
        if info.isdir():
            if info.size:
                raise refuse(f"{name!r}: a folder entry that holds data")
            dirs.append(parts)
        else:
            files.append(Member(name, parts, info.size, info))
    raw.seek(tf.offset)
    end = raw.read(512)
    if len(end) < 512:
        raise refuse("a truncated tar archive: it has no end-of-archive marker")
    if any(end):
        raise refuse(f"a corrupt tar archive: an unreadable header at byte {tf.offset}")
    return Archive(files, dirs, lambda m: _extracted(tf, m))


def _extracted(tf: tarfile.TarFile, member: Member) -> IO[bytes]:
    src = tf.extractfile(member.ref)
    if src is None:
        raise refuse(f"{member.name!r}: not a regular file")
    return src


def _check_members(archive: Archive, limits: ArchiveLimits) -> None:
    """Sizes, and one path per member: no duplicates, no case twins, no file used as a folder."""
    total = sum(m.size for m in archive.files)
    if total > limits.max_unpacked_bytes:
        raise refuse(
            f"unpacks to {_mib(total)}, over the limit of {_mib(limits.max_unpacked_bytes)}"
        )
    big = next((m for m in archive.files if m.size > limits.max_member_bytes), None)
    if big is not None:
        raise refuse(f"{big.name!r}: {_mib(big.size)}, over {_mib(limits.max_member_bytes)}")
    seen: dict[str, tuple[str, ...]] = {}
    for parts in [m.parts for m in archive.files if not is_junk(m.parts)]:
        if not parts:
            raise refuse("a file without a name")
        earlier = seen.get(_fold(parts))
        if earlier == parts:
            raise refuse(f"{'/'.join(parts)!r} appears twice in the archive")
        if earlier is not None:
            raise refuse(f"{'/'.join(earlier)!r} and {'/'.join(parts)!r} differ only in case")
        seen[_fold(parts)] = parts
    folders = {_fold(p[:i]) for p in [*seen.values(), *archive.dirs] for i in range(1, len(p))}
    folders |= {_fold(d) for d in archive.dirs if d}
    clash = next((p for key, p in seen.items() if key in folders), None)
    if clash is not None:
        raise refuse(f"{'/'.join(clash)!r} is both a file and a folder")
