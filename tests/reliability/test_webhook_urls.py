"""Webhook URLs are parsed one way, and each delivery connects to the address it checked (Host kept)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinema.engines.cache import WarmModels
from kinema.errors import InvalidInput
from kinema.tasks.webhooks import check_webhook_url, webhook_target
from tests.reliability.servers import fake_dns, loopback_only, running_server

TINY_RUN = "/v1/apps/kinema/tiny/run"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records each request's Host header."""

    def __init__(self) -> None:
        hosts: list[str] = []
        self.hosts = hosts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                hosts.append(self.headers.get("host", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_delivery_goes_to_the_checked_address_with_the_host_header_kept(
    tmp_path: Path, tiny_model_dir: Path, warm: WarmModels
) -> None:
    receiver = Receiver()
    # A rebinding name: the first answer is the receiver, any later lookup would answer 10.9.9.9, where
    # the loopback guard would refuse to connect (and fail the delivery).
    try:
        with (
            fake_dns({"hooks.example": ["127.0.0.1", "10.9.9.9"]}) as lookups,
            loopback_only() as connections,
            running_server(
                tmp_path, tiny_model_dir, warm, webhook_allow_private=True, webhook_poll_s=0.05
            ) as live,
            live.client() as api,
        ):
            url = f"http://hooks.example:{receiver.port}/hook"
            params = {"webhook": url, "webhook_events_filter": "completed"}
            task = api.post(TINY_RUN, params=params, json={"prompt": "x", "duration": 0.25}).json()
            assert task["status"] == "completed"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                deliveries = api.get(f"/v1/tasks/{task['id']}/webhooks").json()["data"]
                if deliveries and deliveries[0]["status"] != "pending":
                    break
                time.sleep(0.05)
        assert deliveries[0]["status"] == "delivered", deliveries
        assert receiver.hosts == [f"hooks.example:{receiver.port}"]
        assert lookups == ["hooks.example"]  # resolved once, and the connection used that answer
        assert "10.9.9.9" not in connections
    finally:
        receiver.close()


@pytest.mark.parametrize(
    "url,reason",
    [
        ("http://127.0.0.1\\@1.2.3.4/", "backslash"),
        ("http://user@1.2.3.4/", "user name"),
        ("http://user:pw@1.2.3.4/", "user name"),
        ("http://127.0.0.1:99999/", "port"),
        ("http://127.0.0.1:abc/", "malformed"),
        ("http://[::1/", "malformed"),
        ("ftp://1.2.3.4/", "must use"),
    ],
)
def test_webhook_url_refusals_are_the_same_with_or_without_private_addresses(url: str, reason: str) -> None:
    with loopback_only() as connections:
        for allow_private in (False, True):
            with pytest.raises(InvalidInput, match=reason) as raised:
                check_webhook_url(url, allow_private=allow_private)
            assert raised.value.details[0]["field"] == "webhook"
    assert connections == []


def test_webhook_to_a_name_resolving_privately_is_refused() -> None:
    with (
        fake_dns({"inside.example": ["192.168.1.5"]}),
        pytest.raises(InvalidInput) as raised,
    ):
        webhook_target("https://inside.example/hook", allow_private=False)
    assert "not a public address" in raised.value.message


def test_webhook_target_parses_like_the_connection_does() -> None:
    with fake_dns({"hooks.example": ["93.184.215.14"]}):
        url, addresses = webhook_target("https://hooks.example:8443/a?b=1", allow_private=False)
    assert (url.host, url.port, [str(a) for a in addresses]) == ("hooks.example", 8443, ["93.184.215.14"])
    assert isinstance(url, httpx.URL)
