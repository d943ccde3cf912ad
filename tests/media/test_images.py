"""Tests for kinema.media.images: data URIs, local files, decoding limits and guarded URL fetching."""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import trustme
from PIL import Image

from kinema.errors import ImageTooLarge, InvalidImage, UnsafeURL
from kinema.media import images
from kinema.media.images import ImageLimits, load_image

RED = (255, 0, 0)
WHITE = (255, 255, 255)
LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
TEST_HOSTS = ("127.0.0.1", "localhost", "images.example", "other-name.example")


# --- builders ---------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """An image saved to bytes in the given format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def solid_png(size: tuple[int, int] = (32, 16), color: tuple[int, int, int] = RED) -> bytes:
    """A small opaque PNG of one colour."""
    return encode(Image.new("RGB", size, color), "PNG")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """A base64 data URI for some bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims the given size; its pixel data is far too short to decode."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- data URIs and decoding -------------------------------------------------------------------------


def test_png_data_uri_loads_as_rgb() -> None:
    image = load_image(data_uri(solid_png()), ImageLimits())
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (32, 16), RED)


def test_jpeg_data_uri_loads_as_rgb() -> None:
    jpeg = encode(Image.new("RGB", (24, 8), (0, 0, 255)), "JPEG", quality=95)
    image = load_image(data_uri(jpeg, "image/jpeg"), ImageLimits())
    assert (image.mode, image.size) == ("RGB", (24, 8))
    red, green, blue = image.getpixel((4, 4))  # type: ignore[misc]
    assert blue > 240 and red < 15 and green < 15


@pytest.mark.parametrize("fmt", ["WEBP", "BMP"])
def test_webp_and_bmp_load(fmt: str) -> None:
    data = encode(Image.new("RGB", (10, 6), RED), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image = load_image(data_uri(data, f"image/{fmt.lower()}"), ImageLimits())
    assert (image.size, image.getpixel((5, 3))) == ((10, 6), RED)


def test_animated_gif_yields_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), (0, 255, 0))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image = load_image(data_uri(gif, "image/gif"), ImageLimits())
    assert (image.mode, image.getpixel((4, 4))) == ("RGB", RED)


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    image = load_image(data_uri(encode(rgba, "PNG")), ImageLimits())
    assert (image.getpixel((0, 0)), image.getpixel((3, 3))) == (RED, WHITE)


def test_palette_transparency_is_flattened_onto_white() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    png = encode(palette, "PNG", transparency=1)
    assert load_image(data_uri(png), ImageLimits()).getpixel((1, 1)) == WHITE


def test_sixteen_bit_greyscale_keeps_its_tones() -> None:
    grey = encode(Image.new("I;16", (4, 4), 32768), "PNG")
    assert load_image(data_uri(grey), ImageLimits()).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    jpeg = encode(Image.new("RGB", (40, 20), RED), "JPEG", exif=exif)
    assert load_image(data_uri(jpeg, "image/jpeg"), ImageLimits()).size == (20, 40)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("data:image/png,not-base64-encoded", "base64"),
        ("data:text/plain;base64,aGVsbG8=", "media type"),
        ("data:;base64,aGVsbG8=", "media type"),
        ("data:image/png;base64", "separating"),
        ("data:image/png;base64,@@@@secret-payload@@@@", "valid base64"),
    ],
)
def test_malformed_data_uri_is_refused_without_echoing_its_data(uri: str, expected: str) -> None:
    with pytest.raises(InvalidImage, match=expected) as raised:
        load_image(uri, ImageLimits())
    assert "secret-payload" not in str(raised.value) and "aGVsbG8" not in str(raised.value)
    assert "\n" not in str(raised.value)


def test_data_uri_over_byte_limit_is_refused() -> None:
    with pytest.raises(ImageTooLarge, match="byte limit"):
        load_image(data_uri(b"\x00" * 5000), ImageLimits(max_bytes=1000))


def test_non_image_bytes_are_refused() -> None:
    with pytest.raises(InvalidImage, match="not a readable image") as raised:
        load_image(data_uri(b"just some text, not pixels"), ImageLimits())
    assert raised.type is InvalidImage


def test_truncated_image_is_refused() -> None:
    png = encode(Image.effect_noise((64, 64), 64).convert("RGB"), "PNG")
    with pytest.raises(InvalidImage, match="not a readable image") as raised:
        load_image(data_uri(png[: len(png) // 2]), ImageLimits())
    assert raised.type is InvalidImage


def test_format_outside_the_accepted_list_is_refused() -> None:
    tiff = encode(Image.new("RGB", (4, 4), RED), "TIFF")
    with pytest.raises(InvalidImage, match="not a readable image"):
        load_image(data_uri(tiff, "image/tiff"), ImageLimits())


def test_pixel_limit_is_enforced_before_decoding() -> None:
    # 8000x8000 is under PIL's own bomb limit; decoding the bogus pixel data would raise InvalidImage,
    # so ImageTooLarge shows the size was refused from the header alone.
    with pytest.raises(ImageTooLarge, match="8000x8000"):
        load_image(data_uri(png_declaring(8000, 8000)), ImageLimits())


def test_pixel_limit_applies_to_real_images() -> None:
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        load_image(data_uri(solid_png((100, 100))), ImageLimits(max_pixels=9999))


@pytest.mark.parametrize("side", [10_000, 100_000], ids=["pil-warning", "pil-error"])
def test_pil_decompression_bomb_checks_become_image_too_large(side: int) -> None:
    with pytest.raises(ImageTooLarge):
        load_image(data_uri(png_declaring(side, side)), ImageLimits(max_pixels=10**12))


# --- local files and reference forms ----------------------------------------------------------------


def test_local_path_loads_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(solid_png())
    assert load_image(str(path), ImageLimits(), allow_local_paths=True).size == (32, 16)
    assert load_image(path.as_uri(), ImageLimits(), allow_local_paths=True).size == (32, 16)


def test_home_relative_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ref.png").write_bytes(solid_png())
    assert load_image("~/ref.png", ImageLimits(), allow_local_paths=True).size == (32, 16)


@pytest.mark.parametrize("form", ["path", "file-uri"])
def test_local_path_is_refused_unless_allowed(tmp_path: Path, form: str) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(solid_png())
    with pytest.raises(InvalidImage, match="https://"):
        load_image(str(path) if form == "path" else path.as_uri(), ImageLimits())


def test_missing_and_oversized_local_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="does not exist"):
        load_image(str(tmp_path / "nope.png"), ImageLimits(), allow_local_paths=True)
    with pytest.raises(InvalidImage, match="directory"):
        load_image(str(tmp_path), ImageLimits(), allow_local_paths=True)
    big = tmp_path / "big.png"
    big.write_bytes(solid_png((256, 256)))
    with pytest.raises(ImageTooLarge):
        load_image(str(big), ImageLimits(max_bytes=100), allow_local_paths=True)


@pytest.mark.parametrize("ref", ["ftp://example.com/a.png", "s3://bucket/a.png", "picture.png", ""])
def test_unsupported_reference_names_the_accepted_forms(ref: str) -> None:
    with pytest.raises(InvalidImage, match=r"data:image/\.\.\.;base64 URI or an https:// URL"):
        load_image(ref, ImageLimits())


# --- address policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not images.is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert images.is_public_address(ipaddress.ip_address(address))


# --- URL fetching -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a test connects to; connecting anywhere but loopback fails the test."""
    seen: list[str] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        host = str(address[0]).split("%")[0]
        seen.append(host)
        if ipaddress.ip_address(host) not in LOOPBACK:
            raise AssertionError(f"test tried to connect to {host}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return seen


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Fake DNS: names put in the returned dict resolve to their listed answers, in turn."""
    answers: dict[str, list[str]] = {}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            address = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@dataclass
class ImageServer:
    """A live HTTPS server on 127.0.0.1 and what it saw."""

    port: int
    ca_bundle: str
    host_headers: list[str] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """An https URL on this server."""
        return f"https://{host}:{self.port}{path}"

    def limits(self, **overrides: Any) -> ImageLimits:
        """Limits that trust this server's CA and allow its loopback address."""
        settings: dict[str, Any] = {
            "allow_private_urls": True,
            "verify": self.ca_bundle,
            "fetch_timeout_s": 3.0,
        }
        return ImageLimits(**(settings | overrides))


class _Handler(BaseHTTPRequestHandler):
    """Routes for the test server; HTTP/1.0, so each response ends by closing the connection."""

    server: _Server

    def do_GET(self) -> None:
        self.server.record.host_headers.append(self.headers.get("Host", ""))
        url = urlsplit(self.path)
        routes: dict[str, Callable[[], None]] = {
            "/image.png": lambda: self._send(200, self.server.png),
            "/redirect": lambda: self._redirect("/image.png"),
            "/redirect-to": lambda: self._redirect(parse_qs(url.query)["to"][0]),
            "/loop": lambda: self._redirect("/loop"),
            "/huge-declared": self._huge_declared,
            "/huge-stream": self._huge_stream,
            "/trickle": self._trickle,
        }
        routes.get(url.path, lambda: self._send(404, b"not found"))()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _huge_declared(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()

    def _huge_stream(self) -> None:
        # No Content-Length: only counting the streamed bytes can catch this one.
        self.send_response(200)
        self.end_headers()
        for _ in range(64):
            if self.server.stopping.is_set():
                return
            self.wfile.write(b"\x00" * 65536)

    def _trickle(self) -> None:
        # One byte every 50 ms: every read is quick, only a whole-fetch deadline stops it.
        self.send_response(200)
        self.end_headers()
        for _ in range(100):
            if self.server.stopping.wait(0.05):
                return
            self.wfile.write(b"\x00")
            self.wfile.flush()

    def handle(self) -> None:
        # The client hanging up mid-body is what most refusal tests do.
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    png: bytes
    stopping: threading.Event
    record: ImageServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    """An HTTPS image server on a free 127.0.0.1 port, trusted through a throwaway CA."""
    ca = trustme.CA()
    cert = ca.issue_cert(*TEST_HOSTS[:3])  # not other-name.example: that one tests hostname checking
    ca_bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_bundle))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    record = ImageServer(port=httpd.server_address[1], ca_bundle=str(ca_bundle))

    def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        record.sni_names.append(name)

    context.sni_callback = record_sni
    # Handshakes happen on first read, in the handler threads, so a stuck client cannot block accept().
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    httpd.png, httpd.stopping, httpd.record = solid_png(), threading.Event(), record
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_https_url_is_fetched_and_decoded(server: ImageServer) -> None:
    image = load_image(server.url("/image.png"), server.limits())
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (32, 16), RED)


def test_hostname_url_keeps_host_header_and_sni(server: ImageServer) -> None:
    server.host_headers.clear()
    server.sni_names.clear()
    assert load_image(server.url("/image.png", "localhost"), server.limits()).size == (32, 16)
    assert server.host_headers == [f"localhost:{server.port}"]
    assert server.sni_names == ["localhost"]


def test_connection_goes_to_the_checked_address_not_a_fresh_lookup(
    server: ImageServer, resolver: dict[str, list[str]], connections: list[str]
) -> None:
    # A rebinding resolver: a second lookup would answer 10.0.0.1, which the connect guard forbids.
    resolver["images.example"] = ["127.0.0.1", "10.0.0.1"]
    image = load_image(server.url("/image.png", "images.example"), server.limits())
    assert image.size == (32, 16)
    assert connections == ["127.0.0.1"]
    assert resolver["images.example"] == ["10.0.0.1"]  # looked up exactly once


def test_certificate_is_checked_against_the_url_host(
    server: ImageServer, resolver: dict[str, list[str]]
) -> None:
    resolver["other-name.example"] = ["127.0.0.1"]
    with pytest.raises(InvalidImage, match=r"cannot fetch .*(hostname|certificate)"):
        load_image(server.url("/image.png", "other-name.example"), server.limits())


def test_untrusted_certificate_is_refused(server: ImageServer) -> None:
    with pytest.raises(InvalidImage, match="certificate"):
        load_image(server.url("/image.png"), server.limits(verify=True))


def test_redirect_is_followed(server: ImageServer) -> None:
    assert load_image(server.url("/redirect"), server.limits()).size == (32, 16)


def test_redirect_loop_is_refused(server: ImageServer) -> None:
    with pytest.raises(InvalidImage, match="redirected more than 2 times"):
        load_image(server.url("/loop"), server.limits(max_redirects=2))


def _only_test_server_allowed(address: images.IPAddress) -> bool:
    """The production policy, except that the test server's 127.0.0.1 counts as public."""
    return address == ipaddress.ip_address("127.0.0.1") or images.is_public_address(address)


@pytest.mark.parametrize(
    "target",
    ["https://169.254.169.254/latest/meta-data/", "https://[::1]:{port}/image.png", "https://10.0.0.1/"],
)
def test_redirect_to_private_address_is_refused(
    server: ImageServer, connections: list[str], target: str
) -> None:
    url = server.url("/redirect-to?to=" + quote(target.format(port=server.port), safe=""))
    limits = server.limits(allow_private_urls=False)
    with pytest.raises(UnsafeURL, match="not a public address"):
        images._fetch_url(url, limits, address_allowed=_only_test_server_allowed)
    assert connections == ["127.0.0.1"]  # the first hop only


def test_redirect_to_plain_http_is_refused(server: ImageServer) -> None:
    target = quote(f"http://127.0.0.1:{server.port}/image.png", safe="")
    limits = server.limits(allow_private_urls=False)
    with pytest.raises(UnsafeURL, match="must use https"):
        images._fetch_url(
            server.url(f"/redirect-to?to={target}"), limits, address_allowed=_only_test_server_allowed
        )


@pytest.mark.parametrize(
    "target", ["data:image/png;base64,iVBORw0KGgo=", "file:///etc/passwd", "https://[::1/"]
)
def test_redirect_to_another_scheme_or_a_malformed_url_is_refused(
    server: ImageServer, connections: list[str], target: str
) -> None:
    url = server.url("/redirect-to?to=" + quote(target, safe=""))
    with pytest.raises(
        InvalidImage, match=r"must use|malformed|no host|unusable URL|Invalid URL in location"
    ):
        images._fetch_url(
            url, server.limits(allow_private_urls=False), address_allowed=_only_test_server_allowed
        )
    assert connections == ["127.0.0.1"]  # the first hop only


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/a.png",
        "https://10.0.0.1/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/a.png",
        "https://[::ffff:127.0.0.1]/a.png",
        "https://localhost/a.png",
        "https://127.0.0.1:8443/a.png?token=x",
    ],
)
def test_private_url_is_refused_without_connecting(url: str, connections: list[str]) -> None:
    started = time.monotonic()
    with pytest.raises(UnsafeURL, match="not a public address") as raised:
        load_image(url, ImageLimits())
    assert connections == []
    assert time.monotonic() - started < 1.0
    assert "pw" not in str(raised.value) and "token" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@127.0.0.1:8443/a.png?token=x", "https://u@1.2.3.4/", "http://127.0.0.1\\@1.2.3.4/"],
)
def test_userinfo_is_refused_without_connecting(url: str, connections: list[str]) -> None:
    with pytest.raises(UnsafeURL, match=r"user name or password|backslash") as raised:
        load_image(url, ImageLimits(allow_private_urls=True))
    assert connections == []
    assert "pw" not in str(raised.value) and "token" not in str(raised.value)


def test_plain_http_is_refused_without_connecting(connections: list[str]) -> None:
    with pytest.raises(UnsafeURL, match="must use https"):
        load_image("http://93.184.215.14/a.png", ImageLimits())
    assert connections == []


def test_not_found_is_reported_with_its_status(server: ImageServer) -> None:
    with pytest.raises(InvalidImage, match="returned HTTP 404"):
        load_image(server.url("/missing.png"), server.limits())


def test_declared_oversize_body_is_refused(server: ImageServer) -> None:
    with pytest.raises(ImageTooLarge, match="byte limit"):
        load_image(server.url("/huge-declared"), server.limits(max_bytes=100_000))


def test_streamed_oversize_body_is_refused(server: ImageServer) -> None:
    with pytest.raises(ImageTooLarge, match="byte limit"):
        load_image(server.url("/huge-stream"), server.limits(max_bytes=100_000))


def test_fetch_timeout_bounds_the_whole_fetch_not_each_read(server: ImageServer) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidImage, match=r"took longer than 0\.5 s"):
        load_image(server.url("/trickle"), server.limits(fetch_timeout_s=0.5))
    assert time.monotonic() - started < 1.5
