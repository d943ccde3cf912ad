"""`kinema admin` on the local store and `kinema keys` against a live server, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer

KINEMA = str(Path(sys.executable).parent / "kinema")


def kinema(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KINEMA, *args], env=env, capture_output=True, text=True, timeout=120)


def test_admin_creates_a_user_whose_key_works_and_manages_its_keys(
    kinema_env: dict[str, str], live_server: LiveServer
) -> None:
    env = {**kinema_env, "KINEMA_SECRET_KEY": "test-secret"}  # the server's secret: keys must match
    created = kinema(env, "admin", "create-user", "erin")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("kin_") and "created usr_" in created.stderr
    assert kinema(env, "admin", "create-user", "erin").returncode == 2  # names are unique: refused

    credited = kinema(env, "admin", "credit", "erin", "12.50", "--note", "welcome")
    assert credited.returncode == 0, credited.stderr
    assert "balance 12.50 USD" in credited.stdout
    bad = kinema(env, "admin", "credit", "erin", "1.0000001")
    assert bad.returncode == 2 and "six places" in bad.stderr
    assert kinema(env, "admin", "credit", "nobody", "1").returncode == 2

    remote = {**env, "KINEMA_API_URL": live_server.url, "KINEMA_API_KEY": key}
    listed = kinema(remote, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert "first key" in listed.stdout and key[:12] in listed.stdout
    second = kinema(remote, "keys", "create", "ci")
    assert second.returncode == 0 and second.stdout.strip().startswith("kin_")
    with live_server.client(key) as api:
        me = api.get("/v1/me").json()
        assert (me["name"], me["balance"]) == ("erin", "12.50")
        ci_id = next(k["id"] for k in api.get("/v1/keys").json()["data"] if k["name"] == "ci")
    revoked = kinema(remote, "keys", "revoke", ci_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert kinema(remote, "keys", "revoke", "key_nope").returncode == 2
    with live_server.client(second.stdout.strip()) as api:
        assert api.get("/v1/me").status_code == 401
    assert kinema({**remote, "KINEMA_API_KEY": "kin_wrong"}, "keys", "list").returncode == 2
