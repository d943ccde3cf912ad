"""schemathesis against the live server's OpenAPI: no request gets a 5xx, and no route ignores its key.

The server runs in this process on loopback, API-only (tasks stay queued, so no run takes long, and no
image or webhook URL is ever fetched), with every outbound path closed before it opens: name lookups answer
only for IP literals and localhost (without any DNS query), and connecting anywhere but loopback fails and
is recorded. schemathesis runs as its own process (`st run`) with a real Bearer key, bounded by
--max-time, and writes its JSON report, from which the counts are printed.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from kinema.engines.cache import WarmModels
from tests.conftest import ADMIN_KEY
from tests.reliability.guards import no_dns
from tests.reliability.servers import loopback_only, running_server

pytestmark = pytest.mark.slow
ST = str(Path(sys.executable).parent / "st")
MAX_TIME_S = 110  # schemathesis stops generating after this; the whole test stays near two minutes
MAX_EXAMPLES = 40
CHECKS = "not_a_server_error,ignored_auth"


def test_no_operation_answers_5xx_or_ignores_auth(
    tmp_path: Path, tiny_model_dir: Path, warm: WarmModels
) -> None:
    report = tmp_path / "schemathesis.json"
    with (
        no_dns() as refused_names,
        loopback_only() as connected,
        running_server(
            tmp_path,
            tiny_model_dir,
            warm,
            workers=0,
            remote_workers=0,
            run_wait_s=0.2,
            # The Veo apps are available (else every run of them is the documented 503); with no workers
            # nothing is ever sent to Google.
            google_api_key=SecretStr("test-google-key"),
            # Likewise the LTX apps have weights here (the tiny LTX-2.5 repo), and the Kandinsky apps their
            # tiny builtins (never built: no worker loads them), so runs are accepted, not the documented 503
            # for missing weights.
            model_paths={
                **{app: str(tiny_model_dir) for app in ("lightricks/ltx-2-fast", "lightricks/ltx-2")},
                "kandinskylab/kandinsky-6-fast": "builtin:tiny-kandinsky6",
                "kandinskylab/kandinsky-6": "builtin:tiny-kandinsky6-full",
            },
        ) as server,
    ):
        assert not server.settings.image_allow_private_urls and not server.settings.webhook_allow_private
        result = subprocess.run(
            [
                ST,
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                CHECKS,
                "--header",
                f"Authorization: Bearer {ADMIN_KEY}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--max-time",
                str(MAX_TIME_S),
                "--request-timeout",
                "5",
                # One worker: schemathesis' coverage phase builds hypothesis filters whose lambda descriptions
                # call ast.parse, which CPython 3.11 does not make thread-safe (SystemError with two).
                "--workers",
                "1",
                "--seed",
                "14",
                "--suppress-health-check",
                "all",
                # The admin key is the run's only key: revoking it would turn the rest of the run into 401s.
                "--exclude-method",
                "DELETE",
                "--report",
                "json",
                "--report-json-path",
                str(report),
            ],
            capture_output=True,
            text=True,
            timeout=MAX_TIME_S + 60,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
    assert report.exists(), result.stdout[-20000:] + result.stderr[-5000:]
    outcome = json.loads(report.read_text())
    operations, cases = outcome["operations"], outcome["test_cases"]
    print(
        f"\nschemathesis: {operations['tested']}/{operations['total']} operations, "
        f"{cases['generated']} test cases, {cases['with_failures']} with failures "
        f"({cases['unique_failures']} unique), errors {outcome['errors']}, stop: {outcome['stop_reason']}; "
        f"{len(refused_names)} host names refused without a lookup, {len(connected)} loopback connections"
    )
    assert result.returncode == 0, result.stdout[-20000:]
    assert outcome["failures"] == [] and outcome["errors"] == []
    assert operations["tested"] == operations["selected"] == operations["total"] - 1  # all but DELETE
    assert cases["generated"] >= 300
    assert all(ipaddress.ip_address(host).is_loopback for host in connected)
