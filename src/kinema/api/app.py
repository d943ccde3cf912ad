"""The server: FastAPI app, task store, runner and file server in one process (`kinema serve`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from kinema.api.errors import BodySizeLimit, install_error_handlers
from kinema.api.metrics import HttpLatency, Metrics
from kinema.api.routes import ServerState, router, task_out
from kinema.api.security import Signer, ensure_admin_key, load_secret, request_limiter
from kinema.engines.cache import WARM_MODELS, WarmModels
from kinema.settings import Settings
from kinema.storage import open_storage
from kinema.store import Store
from kinema.store.db import migrate, open_engine
from kinema.tasks.queue import open_queue
from kinema.tasks.runner import Runner, settle_heap
from kinema.tasks.service import TaskService
from kinema.tasks.signals import TaskSignals
from kinema.tasks.webhooks import WebhookSender
from kinema.web.playground import install_playground

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024


def print_admin_key(key: str) -> None:
    """Show a generated admin key once, on the terminal (it is stored only as a hash)."""
    print(
        f"\nkinema: generated the admin API key (shown only now; keep it):\n\n    {key}\n\n"
        "Set KINEMA_ADMIN_KEY to choose your own.\n",
        file=sys.stderr,
        flush=True,
    )


def create_app(
    settings: Settings,
    *,
    warm: WarmModels | None = None,
    announce_key: Callable[[str], None] = print_admin_key,
) -> FastAPI:
    """The ASGI app. Its lifespan migrates the store, makes the admin key valid and runs the workers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        engine = open_engine(settings.database)
        migrate(engine)
        store = Store(engine)
        # Waiters (run-and-wait, SSE) are woken by commits: this process's, and on PostgreSQL every
        # process's through the queue's one LISTEN connection; the fallback re-read covers a missed one.
        signals = TaskSignals(fallback_s=5.0 if store.db.postgresql else 1.0)
        store.db.on_commit(signals.notify)
        queue = open_queue(store, settings, signals)
        signer = Signer(load_secret(settings))
        ensure_admin_key(store.accounts, signer, settings, announce_key)
        storage = open_storage(settings)
        await run_in_threadpool(storage.sweep_staging, settings.staging_grace_s)  # a crash's leftovers
        runner = None
        if settings.local_workers > 0 or settings.remote_workers > 0:
            cache = warm if warm is not None else WARM_MODELS  # an empty cache is falsy (len 0)
            cache.capacity = settings.warm_models
            runner = Runner(
                store,
                queue,
                settings,
                storage,
                cache,
                workers=settings.local_workers,
                on_finished=metrics.task_finished,
            )
        metrics.bind(store.tasks)
        state = ServerState(
            settings=settings,
            store=store,
            storage=storage,
            signer=signer,
            service=TaskService(store, queue, settings, storage),
            runner=runner,
            metrics=metrics,
            signals=signals,
            limiter=request_limiter(settings, store),
        )
        app.state.kinema = state
        public = settings.public_url or f"http://{settings.host}:{settings.port}"
        sender = WebhookSender(
            store,
            settings,
            render=lambda task: task_out(state, public, task).model_dump(mode="json"),
            secret_for=signer.webhook_secret,
        )
        if runner is not None:
            runner.start()
        sender.start()
        settle_heap()  # what start-up imported and built is never garbage: full collections skip it
        try:
            yield
        finally:
            sender.stop()
            if runner is not None:
                runner.stop()
            queue.close()
            engine.dispose()

    metrics = Metrics()
    # /docs and /redoc with their scripts served from the package: a self-hosted install may be offline.
    app = FastAPIOffline(
        title="kinema",
        version="0.1.0",
        description="Self-hostable video generation. Every /v1 route needs `Authorization: Bearer <key>`; "
        "file downloads use signed URLs instead.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(router)
    install_playground(app)
    app.add_middleware(HttpLatency, metrics=metrics)
    app.add_middleware(
        BodySizeLimit,
        default_limit=settings.request_max_bytes,
        limits={"/v1/files": settings.upload_max_bytes + MULTIPART_OVERHEAD},
    )
    return app
