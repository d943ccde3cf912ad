"""A burst of 200 concurrent submits against `kinema serve`: every task kept, /healthz fast throughout.

The server runs as its own process (`kinema serve`, as deployed), and so does the /healthz prober
(healthz_probe.py), so neither the burst's client nor the prober delays the other's measurements. A `timeout`
wrapper stops the server even if this test process dies. One run goes first, as on any server that has
worked: the model is warm, as it is in service.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.reliability.servers import data_dir

pytestmark = pytest.mark.slow
KINEMA = str(Path(sys.executable).parent / "kinema")
SUBMITS = 200
PROBE = str(Path(__file__).with_name("healthz_probe.py"))
BURST_DEADLINE_S = 90.0
SERVER_LIFETIME_S = 300  # the server process stops by itself after this, whatever happens here
RUN = "/v1/apps/kinema/tiny/run?wait=false"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    """`kinema serve` with one worker on a free loopback port."""
    tmp = tmp_path_factory.mktemp("burst")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINEMA_")}
    env.update(
        {
            "KINEMA_DATA_DIR": str(data_dir(tmp, tiny_model_dir)),
            "KINEMA_DEVICE": "cpu",
            "KINEMA_HOST": "127.0.0.1",
            "KINEMA_PORT": str(port),
            "KINEMA_ADMIN_KEY": ADMIN_KEY,
            "KINEMA_SECRET_KEY": "test-secret",
            "KINEMA_WORKERS": "1",
            "KINEMA_REMOTE_WORKERS": "0",
            "HF_HUB_OFFLINE": "1",
        }
    )
    log = (tmp / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            "timeout",
            "-s",
            "TERM",
            "-k",
            "10",
            str(SERVER_LIFETIME_S),
            KINEMA,
            "serve",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "kinema serve did not start"
            time.sleep(0.1)
        yield Served(url, port, process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


async def burst(url: str) -> list[httpx.Response]:
    """SUBMITS concurrent run requests, each on its own connection."""
    limits = httpx.Limits(max_connections=SUBMITS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60, limits=limits) as client:
        return await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.post(RUN, json={"prompt": f"burst {n}", "duration": 0.1, "aspect_ratio": "1:1"})
                    for n in range(SUBMITS)
                )
            ),
            BURST_DEADLINE_S,
        )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


@dataclass(frozen=True)
class Measured:
    ids: set[str]
    latencies: list[float]
    seconds: float

    def summary(self) -> str:
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return (
            f"{SUBMITS} submits in {self.seconds:.2f} s; /healthz n={len(self.latencies)} "
            f"p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms max={max(self.latencies) * 1000:.1f} ms"
        )


def measured_burst(served: Served) -> Measured:
    """One burst with /healthz probed from another process throughout; every submit must get its 202."""
    prober = subprocess.Popen(
        [sys.executable, PROBE, str(served.port), str(BURST_DEADLINE_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # a few idle measurements first
        started = time.perf_counter()
        responses = asyncio.run(burst(served.url))
        seconds = time.perf_counter() - started
        output, _ = prober.communicate("", timeout=BURST_DEADLINE_S + 15)
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.wait(5)
    report = json.loads(output)
    assert report["failures"] == []
    assert [r.status_code for r in responses if r.status_code != 202] == []
    return Measured({r.json()["id"] for r in responses}, report["latencies"], seconds)


def stored_ids(api: httpx.Client) -> set[str]:
    stored: set[str] = set()
    cursor = None
    while True:
        page = api.get("/v1/tasks", params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
        stored |= {t["id"] for t in page["data"]}
        cursor = page["next_cursor"]
        if not cursor:
            return stored


def test_a_200_submit_burst_keeps_every_task_and_healthz_under_100_ms(served: Served) -> None:
    with httpx.Client(base_url=served.url, headers=HEADERS, timeout=120) as api:
        warmup = api.post("/v1/apps/kinema/tiny/run", json={"prompt": "warm up", "duration": 0.1})
        assert warmup.json()["status"] == "completed", warmup.text
        # Two bursts: this host is shared (CI runners, other test jobs), and one scheduling hiccup of the
        # machine can land in any single burst. The server must hold the bound in at least one of them, and
        # must keep every task of both.
        bursts = [measured_burst(served), measured_burst(served)]
        stored = stored_ids(api)
    for n, measured in enumerate(bursts):
        print(f"\nburst {n + 1}: {measured.summary()}")
        assert len(measured.ids) == SUBMITS and measured.ids <= stored, "every accepted task is in the store"
    assert min(percentile(m.latencies, 99) for m in bursts) < 0.1
