"""Load the optional reference image of a generation request: from a data URI, an https URL or a file."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import ssl
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from kinema.errors import ImageTooLarge, InvalidImage, UnsafeURL
from kinema.media.urls import (
    AddressPolicy,
    IPAddress,
    ResolveTimeout,
    URLRefused,
    allow_any_address,
    is_public_address,
    parse_url,
    pinned_client,
    resolve_checked,
)

__all__ = ["ACCEPTED_FORMATS", "IPAddress", "ImageLimits", "is_public_address", "load_image"]

# Only formats a user plausibly sends; restricting PIL's plugins also keeps parsers such as EPS
# (which shells out to Ghostscript) and PSD/TIFF away from untrusted bytes.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_ACCEPTED_FORMS = "a data:image/...;base64 URI or an https:// URL"
_NOT_AN_IMAGE = "is not a readable image (PNG, JPEG, WebP, GIF or BMP)"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Transparent pixels become white: reference images with alpha are mostly logos and cut-outs drawn
# for light backgrounds, and dark line art would vanish on black.
_FLATTEN_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what load_image will fetch and decode."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    fetch_timeout_s: float = 15.0
    allow_private_urls: bool = False  # tests set True to fetch from a loopback server
    max_redirects: int = 5
    verify: bool | str = True  # TLS verification, or path to a CA bundle (tests use a local CA)


def load_image(ref: str, limits: ImageLimits, *, allow_local_paths: bool = False) -> Image.Image:
    """A fully decoded RGB image, upright per its EXIF orientation, from a data URI, URL or local path.

    Local paths (including ``~`` and ``file://`` forms) are accepted only with allow_local_paths,
    which the CLI sets and the HTTP API never does.
    """
    ref = ref.strip()
    lowered = ref[:16].lower()
    if lowered.startswith("data:"):
        return decode_image(_data_uri_bytes(ref, limits), limits, source="data URI")
    if lowered.startswith(("https://", "http://")):
        return decode_image(_fetch_url(ref, limits), limits, source=f"image at {_describe_url(ref)}")
    if lowered.startswith("file:") or ("://" not in ref and allow_local_paths):
        if not allow_local_paths:
            raise InvalidImage(f"local image files are not accepted here; send {_ACCEPTED_FORMS}")
        path = _local_path(ref)
        return decode_image(_read_file(path, limits), limits, source=f"image file {str(path)!r}")
    accepted = _ACCEPTED_FORMS + (" or a local file path" if allow_local_paths else "")
    raise InvalidImage(f"unsupported image reference {_shorten(ref)!r}: expected {accepted}")


def decode_image(data: bytes, limits: ImageLimits, *, source: str = "image") -> Image.Image:
    """Decode bytes to an upright RGB image, refusing oversized images before their pixels are decoded."""
    image = _open_checked(data, limits, source)
    try:
        try:
            image.load()  # the first frame only, for GIF and animated WebP
            # A malformed EXIF block should not cost the user their image, only its rotation.
            with contextlib.suppress(OSError, ValueError, SyntaxError, KeyError):
                ImageOps.exif_transpose(image, in_place=True)
            return _flatten_to_rgb(image)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImage(f"{source} {_NOT_AN_IMAGE}: {_one_line(exc)}") from exc
    finally:
        image.close()


MIME_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


def image_format(data: bytes) -> str | None:
    """The image's format from its content (PNG, JPEG, ...), or None when it is none kinema accepts.

    Only the header is read. A decompression bomb still has a format; decode_image refuses its pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                fmt = image.format or ""
        except Image.DecompressionBombError:
            # PIL refuses to open it at all; the format is in the first bytes, which is all we need here.
            fmt = _format_from_magic(data)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            fmt = ""
    return fmt if fmt in MIME_TYPES else None


def _format_from_magic(data: bytes) -> str:
    """An accepted format named by its magic bytes ("" when none matches)."""
    magic = {
        b"\x89PNG\r\n\x1a\n": "PNG",
        b"\xff\xd8\xff": "JPEG",
        b"GIF87a": "GIF",
        b"GIF89a": "GIF",
        b"BM": "BMP",
    }
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for prefix, fmt in magic.items() if data.startswith(prefix)), "")


def read_data_uri(ref: str, limits: ImageLimits) -> tuple[bytes, str]:
    """The bytes and format of a data: URI image, decoded once to prove it is a usable image.

    Raises what load_image would (InvalidImage, ImageTooLarge), so a server can refuse it at submit.
    """
    data = _data_uri_bytes(ref.strip(), limits)
    decode_image(data, limits, source="data URI").close()
    fmt = image_format(data)
    if fmt is None:  # decode_image accepted it, so this is only a belt to its braces
        raise InvalidImage(f"data URI {_NOT_AN_IMAGE}")
    return data, fmt


def check_image_size(data: bytes, limits: ImageLimits, *, source: str = "image") -> None:
    """Refuse an image over the byte or pixel limits (a decompression bomb too) from its header alone."""
    _open_checked(data, limits, source).close()


def _open_checked(data: bytes, limits: ImageLimits, source: str) -> Image.Image:
    """The image opened lazily (header read, pixels not decoded), within the byte and pixel limits."""
    if len(data) > limits.max_bytes:
        raise _too_many_bytes(source, limits)
    with warnings.catch_warnings():
        # PIL only warns between its own limit and twice that; an error keeps one path for both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(source, None, limits) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImage(f"{source} {_NOT_AN_IMAGE}") from exc
    if image.width * image.height > limits.max_pixels:
        size = image.size
        image.close()
        raise _too_many_pixels(source, size, limits)
    return image


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image; transparency is composited onto _FLATTEN_BACKGROUND."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit greyscale PNGs: a plain convert would clip everything above 255 to white.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _FLATTEN_BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _data_uri_bytes(ref: str, limits: ImageLimits) -> bytes:
    """The decoded payload of a ``data:image/...;base64,`` URI."""
    header, comma, payload = ref[len("data:") :].partition(",")
    if not comma:
        raise InvalidImage("data URI has no ',' separating its header from its data")
    mime, *params = (part.strip().lower() for part in header.split(";"))
    if not mime.startswith("image/"):
        raise InvalidImage(f"data URI has media type {_shorten(mime or 'text/plain')!r}; expected image/...")
    if "base64" not in params:
        raise InvalidImage("data URI must be base64-encoded (data:image/...;base64,...)")
    compact = "".join(payload.split())
    # Refuse before decoding so an oversized upload never doubles in memory.
    if len(compact) // 4 * 3 > limits.max_bytes + 2:
        raise _too_many_bytes("data URI", limits)
    # Accept the URL-safe alphabet and missing padding that some clients produce.
    normalized = compact.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"data URI ({mime}) does not contain valid base64 data") from None


def _local_path(ref: str) -> Path:
    """The filesystem path a local reference names, with ``~`` expanded."""
    if ref[:5].lower() == "file:":
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise InvalidImage(f"file URL must name a local file, not host {parts.netloc!r}")
        return Path(url2pathname(parts.path)).expanduser()
    return Path(ref).expanduser()


def _read_file(path: Path, limits: ImageLimits) -> bytes:
    """The bytes of a local image file, refusing files over the byte limit before reading them."""
    try:
        with path.open("rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise InvalidImage(f"image path {str(path)!r} is not a regular file")
            if status.st_size > limits.max_bytes:
                raise _too_many_bytes(f"image file {str(path)!r}", limits)
            # Read one byte past the limit: the size can change between stat and read.
            data = file.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise InvalidImage(f"image file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise InvalidImage(f"image path {str(path)!r} is a directory, not a file") from None
    except OSError as exc:
        raise InvalidImage(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > limits.max_bytes:
        raise _too_many_bytes(f"image file {str(path)!r}", limits)
    return data


def _fetch_url(url: str, limits: ImageLimits, *, address_allowed: AddressPolicy | None = None) -> bytes:
    """The body of an image URL, following redirects by hand so that every hop's address is checked.

    address_allowed overrides the policy derived from limits.allow_private_urls (tests use it to allow
    one loopback server while checking the redirects it sends).
    """
    if address_allowed is None:
        address_allowed = allow_any_address if limits.allow_private_urls else is_public_address
    deadline = time.monotonic() + limits.fetch_timeout_s
    ssl_context = _ssl_context(limits.verify)
    current = _parse_url(url)
    for _hop in range(limits.max_redirects + 1):
        _check_scheme(current, limits)
        addresses = _resolve_checked(current, address_allowed, deadline, limits)
        body_or_location = _fetch_hop(current, addresses, ssl_context, deadline, limits)
        if isinstance(body_or_location, bytes):
            return body_or_location
        current = _redirect_target(current, body_or_location)
    raise InvalidImage(f"image URL {_describe_url(url)} redirected more than {limits.max_redirects} times")


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    """An httpx.URL, with parse failures reported as InvalidImage and userinfo refused as UnsafeURL."""
    try:
        return parse_url(str(url))
    except URLRefused as exc:
        raise _url_error(str(url), exc) from None


def _url_error(url: str, exc: URLRefused) -> InvalidImage:
    """The image error for a refused URL: UnsafeURL for a policy refusal, InvalidImage otherwise."""
    kind = UnsafeURL if exc.unsafe else InvalidImage
    return kind(f"image URL {_describe_url(url)} {exc.reason}", details=exc.details)


def _check_scheme(url: httpx.URL, limits: ImageLimits) -> None:
    """Refuse any scheme but https (http too when private URLs are allowed, for tests)."""
    allowed = ("https", "http") if limits.allow_private_urls else ("https",)
    if url.scheme not in allowed:
        raise UnsafeURL(f"image URL {_describe_url(str(url))} must use https://, not {url.scheme}://")


def _resolve_checked(
    url: httpx.URL, address_allowed: AddressPolicy, deadline: float, limits: ImageLimits
) -> list[IPAddress]:
    """The addresses a URL's host resolves to, refusing the host if any of them is not allowed."""
    try:
        return resolve_checked(url, address_allowed, deadline)
    except ResolveTimeout:
        raise _timed_out(limits) from None
    except URLRefused as exc:
        raise _url_error(str(url), exc) from None


def check_image_url(url: str, limits: ImageLimits) -> None:
    """Refuse now what a fetch would refuse before connecting: syntax, scheme, userinfo, the host's addresses.

    The fetch checks all of it again (and every redirect), so a DNS answer that changes in between
    gains nothing.
    """
    parsed = _parse_url(url)
    _check_scheme(parsed, limits)
    policy = allow_any_address if limits.allow_private_urls else is_public_address
    _resolve_checked(parsed, policy, time.monotonic() + limits.fetch_timeout_s, limits)


def _fetch_hop(
    url: httpx.URL,
    addresses: list[IPAddress],
    ssl_context: ssl.SSLContext,
    deadline: float,
    limits: ImageLimits,
) -> bytes | str:
    """One request: the body of a 2xx response, or the Location of a redirect."""
    shown = _describe_url(str(url))
    headers = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "kinema"}
    try:
        # A fresh client per hop: its one connection is pinned to this hop's checked addresses.
        with (
            pinned_client(
                url, addresses, deadline=deadline, ssl_context=ssl_context, timeout=limits.fetch_timeout_s
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                return response.headers["location"]
            if not response.is_success:
                raise InvalidImage(
                    f"image URL {shown} returned HTTP {response.status_code}",
                    details={"status": response.status_code},
                )
            return _read_capped(response, shown, limits)
    except httpx.TimeoutException:
        raise _timed_out(limits) from None
    except httpx.HTTPError as exc:
        raise InvalidImage(f"cannot fetch image URL {shown}: {_one_line(exc)}") from None
    except (httpx.InvalidURL, ValueError) as exc:
        # httpx reads a redirect's Location even when not following it; data: or garbage raises here.
        raise InvalidImage(f"image URL {shown} redirected to an unusable URL: {_one_line(exc)}") from None


def _read_capped(response: httpx.Response, shown: str, limits: ImageLimits) -> bytes:
    """A response body, refused as soon as it is known to exceed max_bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_many_bytes(f"image at {shown}", limits)
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limits.max_bytes:
            raise _too_many_bytes(f"image at {shown}", limits)
    return bytes(body)


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    """The absolute URL a redirect's Location header points to."""
    try:
        target = current.join(location)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidImage(f"image URL {_describe_url(str(current))} redirected to a malformed URL") from exc
    return _parse_url(target)


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context for fetches: certifi's CAs, a given CA bundle, or (verify=False) none."""
    if isinstance(verify, str):
        if Path(verify).is_dir():
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify, trust_env=False)


def _too_many_bytes(source: str, limits: ImageLimits) -> ImageTooLarge:
    """The error for an image over the byte limit."""
    return ImageTooLarge(
        f"{source} is larger than the {limits.max_bytes:,}-byte limit",
        details={"max_bytes": limits.max_bytes},
    )


def _too_many_pixels(source: str, size: tuple[int, int] | None, limits: ImageLimits) -> ImageTooLarge:
    """The error for an image over the pixel limit."""
    dimensions = f" ({size[0]}x{size[1]})" if size else ""
    return ImageTooLarge(
        f"{source}{dimensions} has more than the {limits.max_pixels:,}-pixel limit",
        details={"max_pixels": limits.max_pixels},
    )


def _timed_out(limits: ImageLimits) -> InvalidImage:
    """The error for a fetch that ran past fetch_timeout_s."""
    return InvalidImage(f"fetching the image URL took longer than {limits.fetch_timeout_s:g} s")


def _describe_url(url: str) -> str:
    """A URL for error messages: no credentials or query string, which may hold secrets, and short."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # unparseable (e.g. an unclosed IPv6 bracket): show it without query or userinfo
        scheme, _, rest = url.partition("://")
        rest = rest.split("?", 1)[0].split("#", 1)[0]
        return _shorten(f"{scheme}://{rest.rpartition('@')[2]}", 120)
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return _shorten(f"{parts.scheme}://{host}{port}{parts.path}", 120)


def _shorten(text: str, limit: int = 60) -> str:
    """Text cut to a length that fits in a one-line message."""
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(value: object) -> str:
    """A value's text with whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(value).split())
