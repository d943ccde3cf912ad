"""Image URLs to anything but a public address are refused before any connection, at submit and at fetch.

Runs under two guards: name lookups never leave the machine (public names are refused by the guard, so
the server must treat them as unresolvable), and every connect() is recorded and fails unless it is to
loopback. Neither the server nor the fetcher may connect anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kinema.engines.cache import WarmModels
from kinema.errors import InvalidImage
from kinema.media.images import ImageLimits, load_image
from tests.reliability.guards import no_dns
from tests.reliability.servers import loopback_only, running_server

REFUSED_URLS = [
    "https://example.com/cat.png",  # a public name: its lookup is refused here, so it is unresolvable
    "https://127.0.0.1/cat.png",
    "https://localhost/cat.png",
    "https://[::1]/cat.png",
    "https://10.1.2.3/cat.png",
    "https://192.168.0.10/cat.png",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00::1]/cat.png",
    "https://[::ffff:127.0.0.1]/cat.png",
    "https://2130706433/cat.png",  # 127.0.0.1 as one number
    "https://203.0.113.7/cat.png",  # documentation range, not public
    "http://192.0.2.1/cat.png",  # plain http is refused whatever the address
    "https://user:pw@192.0.2.1/cat.png",
]


def test_submit_refuses_private_and_unresolvable_image_urls_without_connecting(
    tmp_path: Path, tiny_model_dir: Path, warm: WarmModels
) -> None:
    with (
        no_dns(),
        loopback_only() as connected,
        running_server(tmp_path, tiny_model_dir, warm, workers=0, remote_workers=0) as server,
        server.client() as api,
    ):
        answers = {
            url: api.post("/v1/apps/kinema/tiny/run?wait=false", json={"prompt": "x", "image": url})
            for url in REFUSED_URLS
        }
        listed = api.get("/v1/tasks").json()["data"]
    assert {url: r.status_code for url, r in answers.items() if not 400 <= r.status_code < 500} == {}
    assert all(
        r.json()["error"]["code"] in ("invalid_image", "unsafe_url", "invalid_input")
        for r in answers.values()
    )
    assert listed == []  # nothing was queued (or held)
    assert set(connected) <= {"127.0.0.1"}  # only the test's own requests to the server


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_the_image_fetcher_refuses_before_connecting(url: str) -> None:
    with no_dns(), loopback_only() as connected, pytest.raises(InvalidImage):
        load_image(url, ImageLimits(fetch_timeout_s=2))
    assert connected == []
