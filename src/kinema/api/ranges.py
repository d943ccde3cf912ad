"""Range requests on downloads, as RFC 9110 (section 14) says, with every error as a JSON body.

The bytes come from Storage.open, so the same route serves a local directory or a bucket.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from email.utils import formatdate
from secrets import token_hex
from urllib.parse import quote

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Send

from kinema.errors import RangeNotSatisfiable
from kinema.storage.base import ObjectInfo, Storage

MAX_RANGES = 16  # more parts than a player asks for is a way to make the server work, not a download
_SPEC = re.compile(r"^(\d*)-(\d*)$")
_HUGE = 10**19  # past any file; int() of thousands of digits would raise (and cost time)


def _number(digits: str) -> int:
    """A position from the header, capped so that a thousand-digit number is just 'very large'."""
    return int(digits) if len(digits) <= 18 else _HUGE


def byte_ranges(header: str | None, size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges a Range header asks of a file of size bytes; [] means send the whole file.

    Per RFC 9110: a unit other than bytes, or a header that is not a valid ranges-specifier (including an
    inverted range such as 5-2), is ignored; a valid one none of whose ranges overlaps the file raises
    RangeNotSatisfiable (416 with Content-Range: bytes */size).
    """
    if header is None:
        return []
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return []
    parts = [part.strip() for part in spec.split(",")]
    if not any(parts) or len(parts) > MAX_RANGES:
        return []
    ranges: list[tuple[int, int]] = []
    for part in parts:
        if not part:
            continue  # RFC 9110's list syntax allows empty elements
        match = _SPEC.match(part)
        if match is None or match.group(0) == "-":
            return []
        first, last = match.group(1), match.group(2)
        if first:
            start = _number(first)
            if last and _number(last) < start:
                return []  # an invalid byte-range-spec makes the whole header invalid: ignore it
            if start >= size:
                continue  # unsatisfiable on its own; the others may still be served
            end = min(_number(last) + 1, size) if last else size
        else:
            suffix = _number(last)
            if suffix == 0 or size == 0:
                continue
            start, end = max(size - suffix, 0), size
        ranges.append((start, end))
    if not ranges:
        raise RangeNotSatisfiable(size)
    return ranges


def served_ranges(header: str | None, size: int) -> list[tuple[int, int]]:
    """The ranges to send for a Range header, sorted and merged where they overlap; [] for the whole file.

    Never raises: the route calls byte_ranges first, so an unsatisfiable range has already become a JSON
    416; one that reaches here (behind a matching If-Range) is served whole.
    """
    try:
        ranges = byte_ranges(header, size)
    except RangeNotSatisfiable:
        return []
    if len(ranges) <= 1:
        return ranges
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class StoredFileResponse(StreamingResponse):
    """A stored object, whole (200) or in byte ranges (206; several as multipart/byteranges), via Storage.

    The headers are Starlette's FileResponse's (Accept-Ranges, Content-Disposition, ETag, Last-Modified,
    If-Range answered from them), so clients see the same responses whatever the backend; the bytes come
    from Storage.open, one range at a time, 64 KiB per read in a worker thread.
    """

    chunk_size = 64 * 1024

    def __init__(
        self,
        storage: Storage,
        info: ObjectInfo,
        *,
        media_type: str,
        filename: str,
        range_header: str | None = None,
        if_range: str | None = None,
        headers: Mapping[str, str] | None = None,
        content_disposition_type: str = "inline",
    ) -> None:
        self.storage, self.info = storage, info
        last_modified = formatdate(info.modified, usegmt=True)
        all_headers = {
            "accept-ranges": "bytes",
            "content-disposition": _content_disposition(content_disposition_type, filename),
            "last-modified": last_modified,
            "etag": info.etag,
            **(headers or {}),
        }
        # If-Range with a weak or stale validator means the client's copy changed: send the whole file.
        validator_holds = if_range is None or (
            not if_range.startswith("W/") and if_range in (last_modified, info.etag)
        )
        ranges = served_ranges(range_header, info.size_bytes) if validator_holds else []
        size, status = info.size_bytes, 206 if ranges else 200
        if not ranges:
            self._parts: list[tuple[bytes, int, int]] = [(b"", 0, size)]
            self._closing = b""
            all_headers["content-length"] = str(size)
        elif len(ranges) == 1:
            start, end = ranges[0]
            self._parts, self._closing = [(b"", start, end)], b""
            all_headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            all_headers["content-length"] = str(end - start)
        else:
            boundary = token_hex(13)  # as browsers do: about 100 bits of entropy
            self._parts = [
                (
                    f"--{boundary}\r\nContent-Type: {media_type}\r\n"
                    f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n".encode("latin-1"),
                    start,
                    end,
                )
                for start, end in ranges
            ]
            self._closing = f"--{boundary}--".encode("latin-1")
            length = sum(len(head) + (end - start) + 2 for head, start, end in self._parts)
            all_headers["content-length"] = str(length + len(self._closing))
            media_type = f"multipart/byteranges; boundary={boundary}"
        self._body = self._read_parts()
        super().__init__(self._body, status_code=status, headers=all_headers, media_type=media_type)

    async def _read_parts(self) -> AsyncGenerator[bytes, None]:
        for head, start, end in self._parts:
            if head:
                yield head
            stream = await run_in_threadpool(self.storage.open, self.info.key, start, end)
            try:
                while chunk := await run_in_threadpool(stream.read, self.chunk_size):
                    yield chunk
            finally:
                stream.close()
            if head:
                yield b"\r\n"
        if self._closing:
            yield self._closing

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # a client gone mid-file: close the stream now, not at GC
                await self._body.aclose()


def _content_disposition(kind: str, filename: str) -> str:
    """Content-Disposition as Starlette writes it: RFC 5987 filename* when the name needs quoting."""
    quoted = quote(filename)
    if quoted != filename:
        return f"{kind}; filename*=utf-8''{quoted}"
    return f'{kind}; filename="{filename}"'
