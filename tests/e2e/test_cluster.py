"""A kinema cluster on this machine: PostgreSQL, API servers and `kinema worker` processes (real processes,
killed, frozen and restarted), running the test-only test/instant app (tests/instant_app.py: steps of a
chosen length, so a task runs as long as a test needs) and, once, the tiny LTX model.

What each test proves is listed in docs/cluster.md. Leases are short here (KINEMA_LEASE_S=2) so lost
workers are noticed in seconds.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from kinema.billing.pricing import to_micros
from kinema.domain.tasks import TaskStatus
from kinema.store import Store
from kinema.store.db import open_engine
from kinema.store.schema import IdempotencyKeyRow, LedgerEntryRow, TaskEventRow, TaskRow
from tests.e2e.cluster import Cluster, Proc, client, wait_until, worker_pid
from tests.postgres import fresh_database

pytestmark = pytest.mark.slow  # real processes: about two and a half minutes for the module

INSTANT = "/v1/apps/test/instant/run"
TINY = "/v1/apps/kinema/tiny/run"
LEASE_S = 2.0


@pytest.fixture(scope="module")
def database(postgres_server: str) -> Iterator[str]:
    """One database for the module's cluster."""
    with fresh_database(postgres_server, "c") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An API server and three workers (test/instant only), billing on, short leases."""
    root = tmp_path_factory.mktemp("cluster")
    data_dir = root / "data"
    (data_dir / "models").mkdir(parents=True)
    logs = root / "logs"
    logs.mkdir()
    cluster = Cluster(
        database,
        data_dir,
        logs,
        dict(os.environ),
        extra_env={"KINEMA_LEASE_S": str(LEASE_S), "KINEMA_BILLING_ENABLED": "1"},
    )
    try:
        api, url = cluster.api(wait=False)
        workers = [cluster.worker(f"w{n}", "--apps", "test/instant", wait=False) for n in range(3)]
        cluster.wait_ready(api, url)
        cluster.extra_env["TEST_API_URL"] = url  # where the tests reach it
        for worker in workers:
            cluster.wait_serving(worker)
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def store(database: str) -> Iterator[Store]:
    """The cluster's database, read directly by the tests (never written)."""
    engine = open_engine(database)
    yield Store(engine)
    engine.dispose()


def api_url(cluster: Cluster) -> str:
    return cluster.extra_env["TEST_API_URL"]


def new_user(url: str, credit: str = "100") -> str:
    """A new account with credit; its API key."""
    with client(url) as admin:
        name = f"u{uuid.uuid4().hex[:8]}"
        created = admin.post("/v1/admin/users", json={"name": name})
        assert created.status_code == 201, created.text
        assert admin.post(f"/v1/admin/users/{name}/credit", json={"amount": credit}).status_code == 200
        return str(created.json()["key"])


def submit(api: httpx.Client, body: dict[str, Any], path: str = INSTANT, **headers: str) -> dict[str, Any]:
    response = api.post(path, params={"wait": "false"}, json=body, headers=headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


def job(steps: int, step_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A test/instant input running `steps` steps of `step_s` seconds."""
    return {"prompt": f"steps={steps} step_s={step_s}", "aspect_ratio": "1:1", **extra}


def rows(store: Store, ids: list[str]) -> dict[str, TaskRow]:
    with store.db.session() as session:
        return {row.id: row for row in session.scalars(select(TaskRow).where(TaskRow.id.in_(ids)))}


def all_finished(store: Store, ids: list[str]) -> bool:
    return all(TaskStatus(row.status).finished for row in rows(store, ids).values())


def charges(store: Store, ids: list[str]) -> dict[str, int]:
    """Charge entries per task in the ledger."""
    with store.db.session() as session:
        found = session.execute(
            select(LedgerEntryRow.task_id, func.count())
            .where(LedgerEntryRow.task_id.in_(ids), LedgerEntryRow.kind == "charge")
            .group_by(LedgerEntryRow.task_id)
        ).all()
    return {task_id: count for task_id, count in found if task_id is not None}


def messages(store: Store, task_id: str) -> list[str]:
    with store.db.session() as session:
        found = session.scalars(
            select(TaskEventRow).where(TaskEventRow.task_id == task_id).order_by(TaskEventRow.id)
        )
        return [event.data["message"] for event in found if event.kind == "log"]


def running_on(store: Store, proc: Proc) -> str | None:
    """A task running on this worker process now, if any."""
    with store.db.session() as session:
        for row in session.scalars(select(TaskRow).where(TaskRow.status == "running")):
            if worker_pid(row.worker_id) == proc.pid and row.progress:
                return row.id
    return None


def idempotent_task(store: Store, key: str) -> str | None:
    with store.db.session() as session:
        return session.scalar(select(IdempotencyKeyRow.task_id).where(IdempotencyKeyRow.key == key))


def assert_completed_once(store: Store, url: str, key: str, ids: list[str]) -> dict[str, TaskRow]:
    """Every task completed, charged exactly once, and the account's balance moved by exactly their cost."""
    found = rows(store, ids)
    assert {row.status for row in found.values()} == {"completed"}, {r.id: r.status for r in found.values()}
    assert charges(store, ids) == dict.fromkeys(ids, 1)
    with client(url, key) as api:
        me = api.get("/v1/me").json()
    costs = sum(to_micros(row.output_meta["billing"]["cost"]) for row in found.values())
    assert me["held"] == "0.00"
    assert to_micros(me["balance"]) == to_micros("100") - costs
    return found


# Tests -------------------------------------------------------------------------------------------------


def test_forty_tasks_across_three_workers_complete_exactly_once(cluster: Cluster, store: Store) -> None:
    url = api_url(cluster)
    key = new_user(url)
    with client(url, key) as api, ThreadPoolExecutor(8) as pool:
        ids = [t["id"] for t in pool.map(lambda n: submit(api, job(2, 0.02)), range(40))]
    assert len(set(ids)) == 40
    wait_until(lambda: all_finished(store, ids), 120, "40 tasks to finish", every=0.2)
    found = assert_completed_once(store, url, key, ids)
    assert {row.attempts for row in found.values()} == {1}  # nothing ran twice
    pids = {worker_pid(row.worker_id) for row in found.values()}
    assert len(pids) >= 2, pids  # the work was spread over the workers
    assert len({row.output_file_id for row in found.values()}) == 40
    with httpx.Client(base_url=url) as anonymous:
        metrics = anonymous.get("/metrics").text
    assert 'kinema_queue_depth{app="test/instant"} 0.0' in metrics
    assert 'kinema_tasks_running{app="test/instant"} 0.0' in metrics


def test_a_worker_killed_mid_task_loses_no_task_and_charges_none_twice(
    cluster: Cluster, store: Store
) -> None:
    url = api_url(cluster)
    key = new_user(url)
    victim = cluster.worker("victim", "--apps", "test/instant")
    with client(url, key) as api:
        ids = [submit(api, job(8, 0.1))["id"] for _ in range(12)]
    lost = wait_until(lambda: running_on(store, victim), 60, "the victim to run a task")
    victim.kill()  # kill -9: no shutdown code, its task is left running with a stale heartbeat
    wait_until(lambda: all_finished(store, ids), 90, "every task to finish", every=0.2)
    found = assert_completed_once(store, url, key, ids)
    assert found[lost].attempts == 2 and worker_pid(found[lost].worker_id) != victim.pid
    assert any(m.endswith("task requeued") for m in messages(store, lost))


def test_a_frozen_worker_loses_its_lease_and_its_late_result_is_refused(
    cluster: Cluster, store: Store
) -> None:
    url = api_url(cluster)
    key = new_user(url)
    frozen = cluster.worker("frozen", "--apps", "test/instant")
    with client(url, key) as api:
        ids = [submit(api, job(25, 0.1))["id"] for _ in range(4)]
    task_id = wait_until(lambda: running_on(store, frozen), 60, "the frozen worker to run a task")
    frozen.signal(signal.SIGSTOP)  # alive but silent: only its lease can tell
    try:
        wait_until(
            lambda: (row := rows(store, [task_id])[task_id]).attempts == 2 and row.status == "running",
            30,
            "another worker to take the task over",
        )
    finally:
        frozen.signal(signal.SIGCONT)  # it wakes up mid-task and would finish the task a second time
    wait_until(lambda: all_finished(store, ids), 60, "every task to finish", every=0.2)
    found = assert_completed_once(store, url, key, ids)
    assert found[task_id].attempts == 2 and worker_pid(found[task_id].worker_id) != frozen.pid
    assert any("no heartbeat" in m for m in messages(store, task_id))
    wait_until(
        lambda: "no longer held" in frozen.text() or "discarding this run" in frozen.text(),
        30,
        "the late worker to give up",
    )
    with client(url, key) as api:
        video = api.get(api.get(f"/v1/tasks/{task_id}").json()["output"]["video"])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"  # the retry's output, intact
    assert frozen.stop() == 0


def test_cancel_reaches_a_task_running_on_a_worker_process_within_a_step(
    cluster: Cluster, store: Store
) -> None:
    url = api_url(cluster)
    key = new_user(url)
    with client(url, key) as api:
        task = submit(api, job(200, 0.1))
        wait_until(
            lambda: (p := api.get(f"/v1/tasks/{task['id']}").json()["progress"]) and p["step"] >= 3,
            60,
            "the task to be a few steps in",
        )
        asked = time.monotonic()
        assert api.post(f"/v1/tasks/{task['id']}/cancel").status_code == 200
        ended = wait_until(
            lambda: (t := api.get(f"/v1/tasks/{task['id']}").json())["status"] == "cancelled" and t,
            10,
            "the cancel to land",
            every=0.02,
        )
        took = time.monotonic() - asked
    assert took < 1.5, took  # a NOTIFY to the worker, then its next step check (steps are 0.1 s)
    assert ended["progress"]["step"] < 200 and ended["output"] is None
    assert charges(store, [task["id"]]) == {}
    with client(url, key) as api:
        assert api.get("/v1/me").json()["balance"] == "100.00"


def test_restarting_the_api_mid_flight_loses_no_task(cluster: Cluster, store: Store) -> None:
    url = api_url(cluster)
    key = new_user(url)
    api_proc = cluster.procs[0]
    with client(url, key) as api:
        ids = [submit(api, job(5, 0.1))["id"] for _ in range(10)]
        waiter: dict[str, Any] = {}

        def wait_on_run() -> None:  # a client waiting on POST .../run when its server dies
            try:
                waiter["response"] = api.post(INSTANT, json=job(20, 0.1), headers={"Idempotency-Key": "k1"})
            except httpx.TransportError as exc:
                waiter["error"] = exc

        thread = threading.Thread(target=wait_on_run)
        thread.start()
        wait_until(lambda: store.tasks.counts_by_status()["running"] > 0, 30, "tasks to run")
        wait_until(lambda: idempotent_task(store, "k1"), 30, "the waiting run to be queued")
        api_proc.kill()
        thread.join(30)
        assert "error" in waiter  # the connection dropped with the server
        port = int(url.rsplit(":", 1)[1])
        restarted, _ = cluster.api(port=port, name="api-restarted")
        cluster.procs.remove(restarted)
        cluster.procs[0] = restarted
        # the client retries with the same Idempotency-Key: the same task, waited for to its end
        again = api.post(INSTANT, json=job(20, 0.1), headers={"Idempotency-Key": "k1"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        ids.append(again.json()["id"])
    wait_until(lambda: all_finished(store, ids), 60, "every task to finish", every=0.2)
    found = assert_completed_once(store, url, key, ids)
    assert {row.attempts for row in found.values()} == {1}  # the workers never noticed


def test_sigterm_lets_a_worker_finish_its_task(cluster: Cluster, store: Store) -> None:
    url = api_url(cluster)
    key = new_user(url)
    leaving = cluster.worker("leaving", "--apps", "test/instant")
    with client(url, key) as api:
        ids = [submit(api, job(15, 0.1))["id"] for _ in range(4)]
    task_id = wait_until(lambda: running_on(store, leaving), 60, "the worker to run a task")
    assert leaving.stop(30) == 0
    row = rows(store, [task_id])[task_id]
    assert row.status == "completed" and worker_pid(row.worker_id) == leaving.pid and row.attempts == 1
    wait_until(lambda: all_finished(store, ids), 60, "every task to finish", every=0.2)
    assert_completed_once(store, url, key, ids)


def test_sigterm_hands_a_long_task_back_after_the_grace_period(cluster: Cluster, store: Store) -> None:
    url = api_url(cluster)
    key = new_user(url)
    leaving = cluster.worker("impatient", "--apps", "test/instant", KINEMA_WORKER_GRACE_S="0.3")
    with client(url, key) as api:
        ids = [submit(api, job(30, 0.1))["id"] for _ in range(4)]
    task_id = wait_until(lambda: running_on(store, leaving), 60, "the worker to run a task")
    assert leaving.stop(30) == 0
    wait_until(lambda: all_finished(store, ids), 60, "every task to finish", every=0.2)
    found = assert_completed_once(store, url, key, ids)
    assert found[task_id].attempts == 2 and worker_pid(found[task_id].worker_id) != leaving.pid
    assert "worker stopped; task requeued" in messages(store, task_id)


def test_the_parent_worker_restarts_a_dead_child_and_stops_them_all(cluster: Cluster, store: Store) -> None:
    parent = cluster.worker("parent", "--processes", "2", "--apps", "test/instant", wait=False)
    cluster.wait_serving(parent, count=2)
    children = {int(p) for p in re.findall(r"started \(pid (\d+)\)", parent.text())}
    assert len(children) == 2
    os.kill(min(children), signal.SIGKILL)
    cluster.wait_serving(parent, count=3)  # a new child says what it serves
    assert "exited with -9; restarting" in parent.text()
    assert parent.stop(30) == 0
    started = {int(p) for p in re.findall(r"started \(pid (\d+)\)", parent.text())}
    assert len(started) == 3 and "all workers stopped" in parent.text()


def test_cancel_stops_the_tiny_model_on_a_worker_within_a_denoising_step(
    cluster: Cluster, store: Store, tiny_model_dir: Path
) -> None:
    (cluster.data_dir / "models" / "kinema-tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    tiny = cluster.worker("tiny", "--apps", "kinema/tiny", OMP_NUM_THREADS="2")
    url = api_url(cluster)
    with client(url, new_user(url)) as api:
        task = submit(api, {"prompt": "stop me", "aspect_ratio": "1:1", "duration": 1}, path=TINY)
        wait_until(
            lambda: (p := api.get(f"/v1/tasks/{task['id']}").json()["progress"]) and p["stage"] == "denoise",
            120,
            "the tiny model to denoise",
            every=0.02,
        )
        api.post(f"/v1/tasks/{task['id']}/cancel")
        ended = wait_until(
            lambda: (t := api.get(f"/v1/tasks/{task['id']}").json())["status"] == "cancelled" and t,
            30,
            "the cancel to land",
            every=0.05,
        )
    assert ended["progress"]["stage"] == "denoise" and ended["progress"]["step"] < ended["progress"]["total"]
    assert worker_pid(rows(store, [task["id"]])[task["id"]].worker_id) == tiny.pid
    assert tiny.stop() == 0


@pytest.fixture
def two_servers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """Two `kinema serve` processes, each with its own in-process worker, on one database."""
    (tmp_path / "data" / "models").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    pair = Cluster(
        postgres_url,
        tmp_path / "data",
        tmp_path / "logs",
        dict(os.environ),
        extra_env={
            "KINEMA_LEASE_S": str(LEASE_S),
            "KINEMA_BILLING_ENABLED": "1",
            "KINEMA_RATE_LIMIT": "12/hour",
            "KINEMA_MAX_RUNNING_PER_ACCOUNT": "1",
        },
    )
    try:
        _, first = pair.api(name="a", KINEMA_WORKERS="1")
        yield pair, first
    finally:
        pair.stop_all()


def test_two_api_servers_share_a_database_without_disturbing_each_other(
    two_servers: tuple[Cluster, str], postgres_url: str
) -> None:
    pair, url_a = two_servers
    engine = open_engine(postgres_url)
    store = Store(engine)
    try:
        key = new_user(url_a)
        with client(url_a, key) as a:
            long = submit(a, job(1000, 0.1))["id"]  # request 1 of this key
            wait_until(lambda: rows(store, [long])[long].status == "running", 60, "A to run its task")
            runner_a = worker_pid(rows(store, [long])[long].worker_id)
            owner = rows(store, [long])[long].owner_id
            _, url_b = pair.api(name="b", KINEMA_WORKERS="1")  # B's start must not touch A's task
            with client(url_b, key) as b:
                ids = [long, submit(b, job(3, 0.1))["id"], submit(a, job(3, 0.1))["id"]]  # requests 2, 3
                time.sleep(2 * LEASE_S)  # B's lease recovery runs meanwhile: A's task is alive, so untouched
                row = rows(store, [long])[long]
                assert row.status == "running" and row.attempts == 1 and worker_pid(row.worker_id) == runner_a
                assert rows(store, ids[1:]).keys() and all(
                    r.status == "queued" for r in rows(store, ids[1:]).values()
                )
                assert b.post(f"/v1/tasks/{long}/cancel").status_code == 200  # 4: B's cancel stops A's run
                most = 0
                while not all_finished(store, ids):  # the account's running cap holds across both servers
                    with store.db.session() as session:
                        running = session.scalar(
                            select(func.count())
                            .select_from(TaskRow)
                            .where(TaskRow.owner_id == owner, TaskRow.status == "running")
                        )
                    most = max(most, running or 0)
                    time.sleep(0.03)
                assert most == 1
                found = rows(store, ids)
                assert [found[i].status for i in ids] == ["cancelled", "completed", "completed"]
                assert all(found[i].attempts == 1 for i in ids)
                assert not any("requeued" in m for m in messages(store, long))
                assert charges(store, ids) == dict.fromkeys(ids[1:], 1)
                # the key's rate limit (12/hour) is counted in the database: both servers see every request
                codes = [(a if n % 2 else b).get("/v1/me").status_code for n in range(9)]
                assert codes == [200] * 8 + [429]
                assert a.get("/v1/me").status_code == 429 and b.get("/v1/me").status_code == 429
    finally:
        engine.dispose()
