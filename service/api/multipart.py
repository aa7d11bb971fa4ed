"""Streamed multipart uploads: one file part straight to disk, small text parts in memory.

The upload routes (weights, datasets) do not let the framework spool an
unbounded file to the temp folder first: the body is parsed as it arrives,
the file part is written to the route's hidden partial file while it is
hashed, and the upload stops at the route's size limit. What differs
between routes is only which parts are welcome and how a refused part is
reported, which a subclass of :class:`StreamedForm` decides.
"""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

FILE = "file"
FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the small fields around the file


def field_error(loc: str, msg: str) -> dict[str, Any]:
    """One error in FastAPI's own 422 shape, naming the form field."""
    return {"type": "value_error", "loc": ["body", loc], "msg": msg, "input": None}


def invalid(loc: str, msg: str) -> RequestValidationError:
    """A 422 naming the form field."""
    return RequestValidationError([field_error(loc, msg)])


class StreamedForm:
    """Receives the parser's callbacks for one upload.

    Attributes:
        filename: The file part's client file name; None until one arrives.
        fields: Text parts received, by name (capped at ``max_text`` bytes).
        size: Bytes of the file part so far.
        digest: SHA-256 of the file part so far.
    """

    def __init__(
        self, sink: BinaryIO, limit: int, too_large: type[Exception], max_text: int
    ) -> None:
        self.sink, self.limit, self.too_large, self.max_text = sink, limit, too_large, max_text
        self.filename: str | None = None
        self.fields: dict[str, bytearray] = {}
        self.size = 0
        self.digest: Any = hashlib.sha256()
        self._total = 0
        self._pending: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = b""
        self._value = b""
        self._part: str | None = None  # FILE, a text field's name, or None: skipped

    def accept(self, name: str) -> bool:
        """Whether a part called ``name`` is kept; a refusal raises or records its error."""
        raise NotImplementedError

    def text_overflow(self, name: str) -> None:
        """Called once a text part passes ``max_text`` bytes (the rest of it is dropped)."""

    def on_part_begin(self) -> None:
        self._headers, self._part = [], None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(dict(self._headers).get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not self.accept(name):
            return
        if name == FILE:
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        else:
            self.fields[name] = bytearray()
        self._part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._total += end - start
        if self._total > self.limit + FORM_OVERHEAD:
            raise self.too_large(FILE, self.limit)
        if self._part == FILE:
            self.size += end - start
            if self.size > self.limit:
                raise self.too_large(FILE, self.limit)
            self._pending.append(data[start:end])
        elif self._part is not None:
            buf = self.fields[self._part]
            if len(buf) <= self.max_text:
                buf += data[start:end]
                if len(buf) > self.max_text:
                    self.text_overflow(self._part)

    def flush(self) -> None:
        """Write what the last chunk carried of the file (called in a worker thread)."""
        data, self._pending = b"".join(self._pending), []
        if data:
            self.digest.update(data)
            self.sink.write(data)


async def receive(request: Request, form: StreamedForm) -> None:
    """Stream the request's multipart body into ``form`` (the file into its sink).

    Raises:
        RequestValidationError: Not a multipart body, or a malformed one.
        Exception: ``form.too_large`` when the body is over the form's limit.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise invalid(FILE, "send a multipart/form-data body with a file part named file")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > form.limit + FORM_OVERHEAD:
        raise form.too_large(FILE, form.limit)
    callbacks = {
        name: getattr(form, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await run_in_threadpool(form.flush)
        parser.finalize()
    except FormParserError as exc:
        raise invalid(FILE, f"malformed multipart body: {exc}") from exc
