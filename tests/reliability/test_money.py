"""Money is written one way (at least two decimals) in every API field and in the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from kinema.billing.pricing import PriceTable, bill, format_micros, format_money
from kinema.engines.cache import WarmModels
from tests.conftest import LiveServer
from tests.reliability.servers import error_of, new_user, running_server

TINY_RUN = "/v1/apps/kinema/tiny/run"
MONEY = r"^-?\d+\.\d{2,6}$"


@pytest.mark.parametrize(
    "amount,text",
    [
        ("4.9", "4.90"),
        ("0", "0.00"),
        ("0.1", "0.10"),
        ("1.25", "1.25"),
        ("0.000001", "0.000001"),
        ("-3", "-3.00"),
    ],
)
def test_format_money(amount: str, text: str) -> None:
    assert format_money(Decimal(amount)) == text


def test_format_micros_is_format_money() -> None:
    assert format_micros(4_900_000) == "4.90"
    assert format_micros(0) == "0.00"


def test_billing_in_output_meta_has_two_decimals() -> None:
    billing = bill(PriceTable(), resolution="720p", has_audio=False, frames=24, fps=24)
    assert (billing.rate_per_second, billing.cost) == ("0.10", "0.10")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, warm: WarmModels
) -> Iterator[LiveServer]:
    with running_server(
        tmp_path_factory.mktemp("money"),
        tiny_model_dir,
        warm,
        workers=0,
        remote_workers=0,
        billing_enabled=True,
    ) as live:
        yield live


def test_me_credit_and_402_use_two_decimals(server: LiveServer) -> None:
    with server.client() as admin:
        key = new_user(admin, "pennies", credit="4.9")
        credited = admin.post("/v1/admin/users/pennies/credit", json={"amount": "0.1"}).json()
        assert (credited["balance"], credited["held"], credited["available"]) == ("5.00", "0.00", "5.00")
        broke_key = new_user(admin, "broke")
    with server.client(key) as client:
        me = client.get("/v1/me").json()
        assert (me["balance"], me["held"], me["available"]) == ("5.00", "0.00", "5.00")
        client.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "duration": 1})
        assert client.get("/v1/me").json()["held"] == "0.10"
    with server.client(broke_key) as broke:
        error = error_of(
            broke.post(TINY_RUN, params={"wait": "false"}, json={"prompt": "x", "duration": 1}), 402
        )
        assert error["details"]["needed"] == "0.10"
        assert error["details"]["available"] == "0.00"
        assert "0.10 USD" in error["message"] and "0.00 USD" in error["message"]


def test_pricing_uses_two_decimals(server: LiveServer) -> None:
    with server.client() as admin:
        pricing = admin.get("/v1/apps/kinema/tiny").json()["pricing"]["per_second"]
    assert set(pricing.values()) == {"0.10", "0.25", "0.30", "0.35"}


def test_cli_admin_credit_prints_two_decimals(tmp_path: Path) -> None:
    env = {"KINEMA_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    cli = [sys.executable, "-m", "kinema.cli.main"]
    subprocess.run([*cli, "admin", "create-user", "cli-user"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [*cli, "admin", "credit", "cli-user", "4.9"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "balance 4.90 USD" in done.stdout and "available 4.90 USD" in done.stdout
    as_json = subprocess.run(
        [*cli, "admin", "credit", "cli-user", "0.1", "--json"], env=env, capture_output=True, text=True
    )
    assert '"balance": "5.00"' in as_json.stdout and '"held": "0.00"' in as_json.stdout


def test_me_without_billing_is_formatted_too(tmp_path: Path, tiny_model_dir: Path, warm: WarmModels) -> None:
    with (
        running_server(tmp_path, tiny_model_dir, warm, workers=0, remote_workers=0) as live,
        live.client() as api,
    ):
        me = api.get("/v1/me").json()
    assert (me["balance"], me["held"], me["available"]) == ("0.00", "0.00", "0.00")
