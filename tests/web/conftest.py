"""Fixtures for the playground tests: one server and one headless Chromium (Debian's) per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer, server_settings

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "playground"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """Debian's chromium (the tests never download a browser)."""
    for candidate in (os.environ.get("KINEMA_TEST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("the playground tests need Chromium: apt-get install chromium (.ci/run does this)")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, warm: WarmModels
) -> Iterator[LiveServer]:
    """A server with billing on (the admin holds 100 USD), where kinema/tiny works and lightricks/ltx-2-fast
    is accepted but fails (its weights are all there, but the transformer's file is damaged)."""
    root = tmp_path_factory.mktemp("playground")
    data_dir = root / "data"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "kinema-tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    damaged = root / "damaged-weights"
    shutil.copytree(tiny_model_dir, damaged)
    for weights in (damaged / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"\x00" * 64)
    settings = Settings(data_dir=data_dir, device="cpu", _env_file=None)  # type: ignore[call-arg]
    served = server_settings(
        settings, billing_enabled=True, model_paths={"lightricks/ltx-2-fast": str(damaged)}
    )
    live = LiveServer(served, warm).start()
    try:
        with live.client() as api:
            me = api.get("/v1/me").json()
            assert (
                api.post(f"/v1/admin/users/{me['id']}/credit", json={"amount": "100.00"}).status_code == 200
            )
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
    launched = playwright.chromium.launch(
        executable_path=chromium_path(),
        args=[
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    try:
        yield launched
    finally:
        launched.close()
        playwright.stop()


class Tab:
    """A page in its own browser context, recording script errors and every URL it requested."""

    def __init__(self, browser: Any, base_url: str, viewport: dict[str, int]) -> None:
        self.context = browser.new_context(base_url=base_url, viewport=viewport)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.urls.append(request.url))

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # else the sticky top bar lands mid-page in the image
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def sign_in(self, key: str = ADMIN_KEY) -> None:
        from playwright.sync_api import expect

        self.page.goto("/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.locator(".app-card").first).to_be_visible()

    def close(self) -> None:
        self.context.close()


def open_tab(browser: Any, server: LiveServer, viewport: dict[str, int]) -> Iterator[Tab]:
    tab = Tab(browser, server.url, viewport)
    try:
        yield tab
    finally:
        tab.close()
    assert tab.errors == [], f"script errors in the page: {tab.errors}"
    assert not [url for url in tab.urls if ADMIN_KEY in url], "the API key must never appear in a URL"


@pytest.fixture
def tab(browser: Any, server: LiveServer) -> Iterator[Tab]:
    """A desktop-sized tab on the module's server."""
    yield from open_tab(browser, server, DESKTOP)


@pytest.fixture
def phone(browser: Any, server: LiveServer) -> Iterator[Tab]:
    """A phone-sized tab (390x844) on the module's server."""
    yield from open_tab(browser, server, PHONE)
