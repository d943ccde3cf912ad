"""Accounts over a real server: tenant isolation, keys, the ledger through the API, 402, 429, idempotency,
Cancel-After and webhooks signed per the Standard Webhooks spec."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import LiveServer, png_data_uri, server_settings

TINY_RUN = "/v1/apps/kinema/tiny/run"
SMALL = {"prompt": "account test", "aspect_ratio": "1:1", "duration": 0.5}


def wait_finished(api: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


def new_user(admin: httpx.Client, server: LiveServer, name: str, credit: str | None = None) -> httpx.Client:
    created = admin.post("/v1/admin/users", json={"name": name})
    assert created.status_code == 201, created.text
    if credit is not None:
        assert admin.post(f"/v1/admin/users/{name}/credit", json={"amount": credit}).status_code == 200
    return server.client(created.json()["key"])


@pytest.fixture
def billed(settings: Settings, warm: WarmModels) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(settings, billing_enabled=True), warm).start()
    try:
        yield server
    finally:
        server.stop()


def test_users_cannot_see_or_touch_each_others_work(api: httpx.Client, live_server: LiveServer) -> None:
    bob = new_user(api, live_server, "bob")
    png = base64.b64decode(png_data_uri(16, 16).split(",", 1)[1])
    upload = bob.post("/v1/files", files={"file": ("b.png", png, "image/png")}).json()
    task = bob.post(TINY_RUN, json={**SMALL, "image": upload["id"]}).json()
    assert task["status"] == "completed"
    keys = bob.get("/v1/keys").json()["data"]
    for method, path in [
        ("GET", f"/v1/tasks/{task['id']}"),
        ("POST", f"/v1/tasks/{task['id']}/cancel"),
        ("GET", f"/v1/tasks/{task['id']}/events"),
        ("GET", f"/v1/tasks/{task['id']}/webhooks"),
        ("GET", f"/v1/files/{upload['id']}"),
        ("DELETE", f"/v1/keys/{keys[0]['id']}"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert api.get("/v1/tasks").json()["data"] == []
    assert [t["id"] for t in bob.get("/v1/tasks").json()["data"]] == [task["id"]]
    borrowed = api.post(TINY_RUN, json={**SMALL, "image": upload["id"]})
    assert borrowed.status_code == 422  # someone else's upload is no upload of yours
    assert bob.get("/v1/admin/users").status_code == 403
    assert bob.post("/v1/admin/users", json={"name": "eve"}).status_code == 403


def test_keys_are_shown_once_stored_hashed_and_revocable(api: httpx.Client, live_server: LiveServer) -> None:
    created = api.post("/v1/keys", json={"name": "laptop"})
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("kin_") and created.json()["prefix"] == secret[:12]
    with live_server.client(secret) as laptop:
        assert laptop.get("/v1/me").json()["id"] == "usr_admin"
    listed = {k["id"]: k for k in api.get("/v1/keys").json()["data"]}
    assert "key" not in listed[created.json()["id"]]
    assert listed[created.json()["id"]]["last_used_at"] is not None
    raw = (live_server.settings.data_dir / "kinema.db").read_bytes()
    assert secret.encode() not in raw
    revoked = api.delete(f"/v1/keys/{created.json()['id']}")
    assert revoked.json()["revoked_at"] is not None
    with live_server.client(secret) as laptop:
        assert laptop.get("/v1/me").status_code == 401
    assert api.post("/v1/keys", json={"name": ""}).status_code == 422


def test_completed_run_is_charged_once_and_me_agrees_with_output_meta(
    api: httpx.Client, billed: LiveServer
) -> None:
    with billed.client() as admin:
        carol = new_user(admin, billed, "carol", credit="1.00")
        me = carol.get("/v1/me").json()
        assert (me["balance"], me["held"], me["available"]) == ("1.00", "0.00", "1.00")
        task = carol.post(TINY_RUN, json={**SMALL, "generate_audio": True}).json()
        assert task["status"] == "completed"
        assert task["output_meta"]["billing"]["cost"] == "0.125"  # 0.5 s at 0.25/s
        me = carol.get("/v1/me").json()
        assert Decimal(me["balance"]) == Decimal("0.875") and Decimal(me["held"]) == 0
        (usage,) = me["usage"]
        assert (
            usage["app"] == "kinema/tiny"
            and Decimal(usage["cost"]) == Decimal("0.125")
            and usage["tasks"] == 1
        )
        # a cancelled run costs nothing and its hold comes back
        queued = carol.post(TINY_RUN, params={"wait": "false"}, json={**SMALL, "duration": 3}).json()
        assert Decimal(carol.get("/v1/me").json()["held"]) == Decimal("0.3")  # 3 s at 0.10/s
        carol.post(f"/v1/tasks/{queued['id']}/cancel")
        wait_finished(carol, queued["id"])
        me = carol.get("/v1/me").json()
        assert Decimal(me["balance"]) == Decimal("0.875") and Decimal(me["held"]) == 0


def test_insufficient_balance_is_a_402_with_the_needed_amount(billed: LiveServer) -> None:
    with billed.client() as admin:
        dave = new_user(admin, billed, "dave", credit="0.10")
        response = dave.post(
            TINY_RUN, json={"prompt": "x", "resolution": "4K", "generate_audio": True, "duration": 1}
        )
        assert response.status_code == 402
        error = response.json()["error"]
        assert error["code"] == "insufficient_balance"
        assert error["details"] == {"needed": "0.35", "available": "0.10", "currency": "USD"}
        assert dave.get("/v1/tasks").json()["data"] == []
        credited = admin.post("/v1/admin/users/dave/credit", json={"amount": "0.25", "note": "top-up"})
        assert credited.json()["available"] == "0.35"
        bad = admin.post("/v1/admin/users/dave/credit", json={"amount": "0.1234567"})
        assert bad.status_code == 422
        assert admin.post("/v1/admin/users/nobody/credit", json={"amount": "1"}).status_code == 404


def test_rate_limit_is_a_429_with_retry_after(settings: Settings, warm: WarmModels) -> None:
    server = LiveServer(server_settings(settings, rate_limit="5/minute"), warm).start()
    try:
        with server.client() as api:
            statuses = [api.get("/v1/apps").status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            limited = api.get("/v1/apps")
            assert limited.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(limited.headers["retry-after"]) <= 60
    finally:
        server.stop()


def test_idempotent_retries_under_concurrency_create_one_task(api: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order-42"}
    ids: list[str] = []
    codes: list[int] = []
    lock = threading.Lock()

    def submit() -> None:
        response = api.post(TINY_RUN, params={"wait": "false"}, json=SMALL, headers=headers)
        with lock:
            codes.append(response.status_code)
            ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(codes) <= {200, 202} and len(set(ids)) == 1
    assert len(api.get("/v1/tasks").json()["data"]) == 1
    replay = api.post(TINY_RUN, params={"wait": "false"}, json=SMALL, headers=headers)
    assert replay.json()["id"] == ids[0] and replay.headers["idempotent-replayed"] == "true"
    different = api.post(TINY_RUN, params={"wait": "false"}, json={**SMALL, "duration": 1}, headers=headers)
    assert different.status_code == 409 and different.json()["error"]["code"] == "conflict"
    wait_finished(api, ids[0])


def test_cancel_after_deadline_cancels_the_task(api: httpx.Client) -> None:
    long = api.post(
        TINY_RUN, params={"wait": "false"}, json={**SMALL, "resolution": "1080p", "duration": 2}
    ).json()
    short = api.post(TINY_RUN, params={"wait": "false"}, json=SMALL, headers={"Cancel-After": "300ms"}).json()
    ended = wait_finished(api, short["id"])
    assert ended["status"] == "cancelled" and ended["error"]["code"] == "deadline_exceeded"
    assert ended["started_at"] is None
    assert api.post(TINY_RUN, json=SMALL, headers={"Cancel-After": "soon"}).status_code == 400
    api.post(f"/v1/tasks/{long['id']}/cancel")
    wait_finished(api, long["id"])


class Receiver:
    """A webhook receiver on loopback that answers from a script of status codes and keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], str, int]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_are_signed_retried_and_logged(settings: Settings, warm: WarmModels) -> None:
    receiver = Receiver([500])
    hooks = server_settings(
        settings, webhook_allow_private=True, webhook_retry_delays_s=[0.2, 0.2, 0.2], webhook_poll_s=0.05
    )
    server = LiveServer(hooks, warm).start()
    try:
        with server.client() as api:
            secret = api.get("/v1/webhooks/secret").json()["key"]
            assert secret.startswith("whsec_")
            params = {"webhook": receiver.url, "webhook_events_filter": ["start", "completed"]}
            task = api.post(TINY_RUN, params=params, json=SMALL).json()
            assert task["status"] == "completed"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                deliveries = api.get(f"/v1/tasks/{task['id']}/webhooks").json()["data"]
                if (
                    deliveries
                    and all(d["status"] == "delivered" for d in deliveries)
                    and len(deliveries) == 2
                ):
                    break
                time.sleep(0.1)
            assert [d["event"] for d in deliveries] == ["start", "completed"]
            first = deliveries[0]
            assert [a["status_code"] for a in first["history"]] == [500, 200]  # retried after the 500
            assert first["history"][0]["error"] == "receiver answered 500"
    finally:
        server.stop()
        receiver.close()
    verifier = Webhook(secret)
    bodies = []
    for headers, body, _status in receiver.received:
        verified = verifier.verify(body, headers)  # the spec's reference verifier
        bodies.append(verified)
        assert headers["webhook-id"].startswith("msg_")
    retried = [h["webhook-id"] for h, _, _ in receiver.received]
    assert retried[0] == retried[1]  # the retry is the same message
    assert receiver.received[0][1] == receiver.received[1][1]
    final = json.loads(receiver.received[-1][1])
    assert final["type"] == "task.completed" and final["data"]["id"] == task["id"]
    assert final["data"]["output"]["video"].startswith("http://")
    tampered = dict(receiver.received[-1][0], **{"webhook-signature": "v1,AAAA"})
    with pytest.raises(Exception):  # noqa: B017 - the library raises its own WebhookVerificationError
        verifier.verify(receiver.received[-1][1], tampered)


def test_webhook_to_a_private_address_is_refused_unless_allowed(api: httpx.Client) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.1/hook", "ftp://example.com/x"):
        response = api.post(TINY_RUN, params={"webhook": url}, json=SMALL)
        assert response.status_code == 422, url
        assert "webhook" in response.json()["error"]["message"]
    params = {"webhook": "https://example.com/h", "webhook_events_filter": "done"}
    bad_event = api.post(TINY_RUN, params=params, json=SMALL)
    assert bad_event.status_code == 422
    assert api.get("/v1/tasks").json()["data"] == []


def test_with_billing_off_runs_need_no_balance_and_charge_nothing(api: httpx.Client) -> None:
    me = api.get("/v1/me").json()
    assert me["billing_enabled"] is False and me["balance"] == "0.00"
    task = api.post(TINY_RUN, json=SMALL).json()
    assert task["status"] == "completed"
    assert task["output_meta"]["billing"]["cost"] == "0.05"  # the price is shown, not charged
    me = api.get("/v1/me").json()
    assert (me["balance"], me["held"], me["usage"]) == ("0.00", "0.00", [])
