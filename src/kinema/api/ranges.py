"""Range requests on downloads, as RFC 9110 (section 14) says, with every error as a JSON body."""

from __future__ import annotations

import re

from starlette.responses import FileResponse

from kinema.errors import RangeNotSatisfiable

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


class RangeFileResponse(FileResponse):
    """Starlette's FileResponse with RFC 9110 range parsing (ignore what is invalid, never text errors).

    The route calls byte_ranges first, so an unsatisfiable range has already become a JSON 416; here
    parsing never raises.
    """

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            ranges = byte_ranges(http_range, file_size)
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
