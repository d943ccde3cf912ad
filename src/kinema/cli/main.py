"""The `kinema` command: run apps here or on a server with a progress bar, follow tasks, pull weights."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kinema.apps.registry import App, get_app, list_apps
from kinema.cli.accounts import admin_cli, keys_cli
from kinema.cli.common import (
    USAGE,
    ApiKeyOption,
    RemoteOption,
    err,
    exit_code_for,
    fail,
    local_time,
    out,
    print_table,
    remote_client,
    remote_errors,
)
from kinema.domain.outputs import OutputMeta
from kinema.domain.stages import stage_label
from kinema.domain.tasks import TaskStatus
from kinema.engines.base import ProgressEvent
from kinema.errors import AppUnavailable, InvalidInput, KinemaError
from kinema.settings import Settings

try:  # Typer >= 0.20 carries its own copy of click; older ones use click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment]

if TYPE_CHECKING:
    from kinema.client import Client, Event
    from kinema.client import Task as RemoteTask
    from kinema.domain.tasks import Task as LocalTask

app = typer.Typer(
    help="kinema: text/image to video with synchronized audio, on your own machine.",
    no_args_is_help=True,
    add_completion=False,
)
apps_cli = typer.Typer(help="List, inspect and run apps.", no_args_is_help=True)
models_cli = typer.Typer(help="Manage model weights in the Hugging Face cache.", no_args_is_help=True)
tasks_cli = typer.Typer(
    help="Follow and manage tasks on a kinema server (--remote URL or KINEMA_API_URL).", no_args_is_help=True
)
app.add_typer(apps_cli, name="app")
app.add_typer(models_cli, name="models")
app.add_typer(tasks_cli, name="task")
app.add_typer(keys_cli, name="keys")
app.add_typer(admin_cli, name="admin")


def lookup(app_id: str) -> App:
    try:
        return get_app(app_id)
    except KinemaError as exc:
        raise fail(exc.message, USAGE) from None


def parse_input_option(text: str) -> Any:
    """--input as inline JSON or @path/to/file.json."""
    source = "--input"
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise fail(f"cannot read input file {path}: {exc.strerror}", USAGE) from None
        source = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", USAGE
        ) from None


def quiet_libraries() -> None:
    """Keep diffusers/transformers chatter and their own progress bars out of our progress display."""
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


@apps_cli.command("list")
def app_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the available apps."""
    apps = list_apps()
    settings = Settings()
    if as_json:
        out.print_json(
            data=[
                {
                    "id": a.id,
                    "version": a.version,
                    "title": a.title,
                    "description": a.description,
                    "available": a.availability(settings).available,
                    "unavailable_reason": a.availability(settings).reason,
                    "weights": a.describe_weights(settings),
                }
                for a in apps
            ]
        )
        return
    table = Table("app", "version", "description", "weights", "available")
    for a in apps:
        availability = a.availability(settings)
        table.add_row(
            a.id,
            a.version,
            a.description,
            weights_cell(a, a.describe_weights(settings)),
            "yes" if availability.available else f"no: {availability.reason}",
        )
    print_table(table)


def weights_cell(app: App, weights: dict[str, Any] | None) -> str:
    """A local app's weights in a word or two: here, or the download size."""
    from kinema.engines.registry import engine_family

    if weights is None:
        return "provider"
    if weights["present"]:
        generation = weights["generation"]
        return "here" + (f" ({engine_family(app.engine.family).label(generation)})" if generation else "")
    size = weights["download_size"]
    if size is None:
        return "missing"
    return f"not here ({'about ' if weights['download_estimated'] else ''}{size} to download)"


@apps_cli.command("show")
def app_show(
    app_id: Annotated[str, typer.Argument(metavar="OWNER/APP")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an app's input schema, defaults and pricing."""
    a = lookup(app_id)
    info = a.describe(Settings())
    if as_json:
        out.print_json(data=info)
        return
    out.print(f"[bold]{a.id}[/] v{a.version} — {a.title}\n{a.description}")
    if not info["available"]:
        out.print(f"[bold red]unavailable:[/] {info['unavailable_reason']}", highlight=False)
    for note in a.notes:
        out.print(f"[yellow]note:[/] {note}")
    schema = info["input_schema"]
    required = set(schema.get("required", []))
    table = Table("field", "type", "default", "description", title="input")
    for name, prop in schema["properties"].items():
        kind = prop.get("type") or " | ".join(
            str(o.get("type") or o.get("enum") or o.get("const")) for o in prop.get("anyOf", [])
        )
        if "enum" in prop:
            kind = " | ".join(str(choice) for choice in prop["enum"])
        default = "required" if name in required else json.dumps(prop.get("default"))
        table.add_row(name, str(kind), default, prop.get("description", ""))
    print_table(table)
    prices = Table("configuration", f"per second ({a.pricing.currency})", title="pricing")
    for key, value in info["pricing"]["per_second"].items():
        prices.add_row(key, value)
    print_table(prices)
    if info["provider"] is not None:
        provider = info["provider"]
        out.print(f"provider: {provider['name']} ({provider.get('api')} API), model {provider.get('model')}")
    elif info["weights"] is not None:
        weights = info["weights"]
        out.print(
            f"weights: {weights['source']} ({weights['variant']}): {weights_cell(a, weights)}",
            highlight=False,
        )


class StageProgress:
    """A Rich progress bar that follows the worker's stages and denoising steps."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not enabled,
        )
        self.bar = self.progress.add_task("starting", total=None, steps="")

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        label = stage_label(event.stage)
        if event.total:
            self.progress.update(
                self.bar,
                description=label,
                total=event.total,
                completed=event.step or 0,
                steps=f"{event.step}/{event.total}",
            )
        else:
            self.progress.update(self.bar, description=label, total=None, steps="")


JsonOption = Annotated[bool, typer.Option("--json", help="Print the task as JSON.")]


@apps_cli.command("run")
def app_run(
    app_id: Annotated[str, typer.Argument(metavar="OWNER/APP")],
    input_text: Annotated[str, typer.Option("--input", "-i", help="Input JSON, or @file.json.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the MP4 here.")] = None,
    as_json: JsonOption = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
    local: Annotated[
        bool, typer.Option("--local", help="Run in this process even if KINEMA_API_URL is set.")
    ] = False,
) -> None:
    """Run an app in this process (or on a server, with --remote or KINEMA_API_URL) and write the MP4."""
    settings = Settings()
    if not local and (remote or settings.api_url):
        raw = parse_input_option(input_text)
        run_remote(remote_client(remote, api_key, settings), app_id, raw, output, as_json)
        return
    from kinema.storage import open_storage
    from kinema.storage.files import write_atomically
    from kinema.storage.keys import output_key
    from kinema.tasks.worker import RunContext, prepare_input, run_task

    a = lookup(app_id)
    raw = parse_input_option(input_text)
    try:
        prepared = prepare_input(a, raw, settings, allow_local_paths=True)
    except (InvalidInput, AppUnavailable) as exc:  # refused before any work: the README's exit 2
        raise fail(exc.message, USAGE) from None
    if not a.is_remote:  # a provider app never imports torch/diffusers, so has none of their chatter
        quiet_libraries()
    from kinema.engines.cache import WARM_MODELS

    WARM_MODELS.capacity = settings.warm_models  # sized once, from settings, for this process
    storage = open_storage(settings)
    try:
        with StageProgress(enabled=err.is_terminal) as progress:
            ctx = RunContext(settings=settings, storage=storage, progress=progress, allow_local_paths=True)
            task = run_task(a, raw, ctx, prepared=prepared)
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written", 130) from None
    if task.status is not TaskStatus.completed or task.output is None or task.output_meta is None:
        if as_json:
            out.print_json(task.model_dump_json())
        error = task.error.message if task.error else task.status.value
        raise fail(error, 1)
    if output is not None:
        try:
            with storage.open(output_key(task.id)) as stored:
                write_atomically(stored, output)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}", 1) from None
    if as_json:
        out.print_json(task.model_dump_json())
        return
    print_result(task, output or stored_location(task.output.video))


def stored_location(url: str) -> Path | str:
    """Where a stored output is, as a person reads it: a path for a local file, else its URL."""
    if url.startswith("file:"):
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        return Path(url2pathname(urlsplit(url).path))
    return url


def print_result(task: LocalTask | RemoteTask, where: Path | str) -> None:
    """The finished task's file (a path, or the URL of a remote task not downloaded) and facts."""
    assert task.output_meta is not None
    out.print(f"[bold green]done[/] {where}", highlight=False, soft_wrap=True)
    table = Table(show_header=False, box=None)
    table.add_row("task", task.id)
    add_meta_rows(table, task.output_meta)
    print_table(table)


def add_meta_rows(table: Table, meta: OutputMeta) -> None:
    """Rows for a completed task's OutputMeta: size, duration, audio, seed, cost, timings."""
    table.add_row("size", f"{meta.width}x{meta.height} ({meta.resolution}, {meta.aspect_ratio})")
    table.add_row("duration", f"{meta.duration:.3f} s, {meta.frames} frames at {meta.fps:g} fps")
    table.add_row("audio", f"{meta.audio_codec}" if meta.has_audio else "none")
    table.add_row("seed", str(meta.seed))
    table.add_row(
        "cost",
        f"{meta.billing.cost} {meta.billing.currency} "
        f"({meta.billing.billable_seconds} s at {meta.billing.rate_per_second}/s)",
    )
    table.add_row("timings", ", ".join(f"{k} {v:.2f}s" for k, v in meta.timings.items()))


# Remote: a kinema server through kinema.Client --------------------------------------------------

LOGS_IDLE_S = 1.0  # `task logs` without --follow stops once the server has been quiet this long


def show_event(progress: StageProgress, event: Event) -> None:
    """Move the progress bar with one of the server's events."""
    if event.progress is not None:
        progress(ProgressEvent(event.progress.stage, event.progress.step, event.progress.total))
    elif event.event == "status" and event.data.get("status") == "queued":
        progress(ProgressEvent("queued"))


def follow(client: Client, task_id: str) -> RemoteTask:
    """Wait for a remote task with the same progress bar as a local run."""
    with StageProgress(enabled=err.is_terminal) as progress:
        return client.wait(task_id, on_event=lambda event: show_event(progress, event))


def cancel_after_interrupt(client: Client, task_id: str) -> typer.Exit:
    """Ctrl-C while following a run: cancel it on the server (asking first on a terminal)."""
    wanted = True
    if sys.stdin.isatty():
        try:
            wanted = typer.confirm(f"Cancel task {task_id} on the server?", default=True, err=True)
        except typer.Abort:  # a second Ctrl-C: leave the task alone
            wanted = False
    if not wanted:
        return fail(f"interrupted; task {task_id} keeps running (follow it: kinema task wait {task_id})", 130)
    try:
        task = client.cancel(task_id)
    except KinemaError as exc:  # it ended meanwhile (409), or the server is gone
        return fail(f"interrupted; could not cancel task {task_id}: {exc.message}", 130)
    state = "cancelled" if task.status is TaskStatus.cancelled else "will stop at its next step"
    return fail(f"interrupted; task {task_id} {state}", 130)


def finish_remote(client: Client, task: RemoteTask, output: Path | None, as_json: bool) -> None:
    """Report a finished remote task as a local run is reported, downloading the MP4 to output."""
    if task.status is not TaskStatus.completed or task.output is None or task.output_meta is None:
        if as_json:
            out.print_json(task.model_dump_json())
        error = task.error.message if task.error else task.status.value
        raise fail(error, 1)
    where: Path | str = task.output.video
    if output is not None:
        try:
            where = client.download(task, output)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}", 1) from None
    if as_json:
        out.print_json(task.model_dump_json())
        return
    print_result(task, where)


def run_remote(client: Client, app_id: str, raw: Any, output: Path | None, as_json: bool) -> None:
    """`app run` on a server: submit, follow the events with a progress bar, download the MP4."""
    if not isinstance(raw, dict):
        raise fail("invalid input: expected a JSON object", USAGE)
    with client, remote_errors():
        try:
            task = client.submit(app_id, raw)
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        try:
            if err.is_terminal:
                err.print(f"task {task.id} on {client.base_url}", style="dim", highlight=False)
            task = follow(client, task.id)
        except KeyboardInterrupt:
            raise cancel_after_interrupt(client, task.id) from None
        try:
            finish_remote(client, task, output, as_json)
        except KeyboardInterrupt:
            raise fail("interrupted; nothing was written", 130) from None


def progress_text(task: RemoteTask) -> str:
    if task.progress is None:
        return ""
    label = stage_label(task.progress.stage)
    return f"{label} {task.progress.step}/{task.progress.total}" if task.progress.total else label


def print_task(task: RemoteTask) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("task", task.id)
    table.add_row("app", f"{task.app} v{task.version}")
    table.add_row("status", task.status.value)
    table.add_row("created", local_time(task.created_at))
    if task.completed_at:
        table.add_row("finished", local_time(task.completed_at))
    if task.progress and not task.finished:
        table.add_row("progress", progress_text(task))
    if task.error:
        table.add_row("error", f"{task.error.message} ({task.error.code})")
    if task.output_meta:
        add_meta_rows(table, task.output_meta)
    print_table(table)
    if task.output:
        out.print(task.output.video, highlight=False, soft_wrap=True)


@tasks_cli.command("get")
def task_get(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOption = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a task: status, progress, error, output URL and facts."""
    with remote_client(remote, api_key) as client, remote_errors():
        task = client.get(task_id)
    if as_json:
        out.print_json(task.model_dump_json())
        return
    print_task(task)


@tasks_cli.command("list")
def task_list(
    status: Annotated[
        list[TaskStatus] | None, typer.Option("--status", "-s", help="Only this status (repeatable).")
    ] = None,
    app_id: Annotated[str | None, typer.Option("--app", metavar="OWNER/APP", help="Only this app.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="How many.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON.")] = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List your tasks on the server, newest first."""
    with remote_client(remote, api_key) as client, remote_errors():
        page = client.list(status=status, app=app_id, limit=limit, cursor=cursor)
    if as_json:
        out.print_json(page.model_dump_json())
        return
    table = Table(box=None, pad_edge=False)
    for header in ("task", "app", "status", "created", "duration", "cost"):
        table.add_column(header, no_wrap=header in ("task", "status", "created"))
    for task in page.data:
        meta = task.output_meta
        table.add_row(
            task.id,
            task.app,
            task.status.value,
            local_time(task.created_at, seconds=False),
            f"{meta.duration:g} s" if meta else "",
            f"{meta.billing.cost} {meta.billing.currency}" if meta else "",
        )
    print_table(table)
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}", highlight=False, soft_wrap=True)


@tasks_cli.command("cancel")
def task_cancel(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOption = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a task: queued work never starts, running work stops at its next step."""
    with remote_client(remote, api_key) as client, remote_errors():
        task = client.cancel(task_id)
    if as_json:
        out.print_json(task.model_dump_json())
    elif task.status is TaskStatus.cancelled:
        out.print(f"task {task.id} cancelled", highlight=False)
    else:
        out.print(f"task {task.id}: cancellation requested; it stops at its next step", highlight=False)


@tasks_cli.command("wait")
def task_wait(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the MP4 here.")] = None,
    as_json: JsonOption = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Follow a task with a progress bar until it ends, then download its MP4 with -o."""
    with remote_client(remote, api_key) as client, remote_errors():
        try:
            task = follow(client, task_id)
            finish_remote(client, task, output, as_json)
        except KeyboardInterrupt:
            raise fail(f"stopped waiting; task {task_id} keeps running on the server", 130) from None


@tasks_cli.command("logs")
def task_logs(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the task ends.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every event (status, progress, log, task) as a JSON line.")
    ] = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a task's log lines; --follow keeps printing until the task ends."""
    with remote_client(remote, api_key) as client, remote_errors():
        try:
            for event in client.stream(task_id, idle_timeout=None if follow_log else LOGS_IDLE_S):
                if as_json:
                    line = json.dumps({"id": event.id, "event": event.event, "data": event.data})
                    out.print(line, highlight=False, markup=False, emoji=False, soft_wrap=True)
                elif event.message is not None:
                    out.print(event.message, highlight=False, markup=False, emoji=False, soft_wrap=True)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


@models_cli.command("pull")
def models_pull(
    app_id: Annotated[str, typer.Argument(metavar="OWNER/APP")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Download the files an app needs into the Hugging Face cache, showing the size first."""
    from kinema.engines.loading import DownloadPlan, download_weights, human_bytes, is_local_source
    from kinema.engines.registry import engine_family, planner_for, weights_source

    a = lookup(app_id)
    settings = Settings()
    source = weights_source(a.id, a.engine, settings)
    planner = planner_for(a.engine)
    if source is None or planner is None:
        out.print(f"{a.id} runs on the provider's servers; there are no weights to download")
        return
    family = engine_family(a.engine.family)
    status = a.weights_status(settings)
    if source.startswith("builtin:") or is_local_source(source):
        if status is not None and not status.present:
            raise fail(
                f"{a.id} uses the directory {source}, which holds no usable model: {status.reason}", USAGE
            )
        out.print(f"{a.id} needs no download; its weights are {source}")
        return
    variant = a.engine.variant
    plans: list[DownloadPlan] = []

    def announce(plan: DownloadPlan) -> None:
        plans.append(plan)
        have = plan.total_bytes - plan.missing_bytes
        already = f", {human_bytes(have)} already here" if have else ""
        err.print(
            f"{a.id}: {source} {family.label(plan.generation)} {variant}, {len(plan.files)} files, "
            f"{human_bytes(plan.total_bytes)}{already}; downloading {human_bytes(plan.missing_bytes)} into "
            "the Hugging Face cache…",
            highlight=False,
        )

    try:
        path = download_weights(
            source, planner, variant=variant, cache_dir=settings.hf_cache_dir, on_plan=announce
        )
    except KinemaError as exc:
        raise fail(exc.message, exit_code_for(exc)) from None
    if as_json:
        plan = plans[0] if plans else None
        out.print_json(
            data={
                "app": a.id,
                "source": source,
                "variant": variant,
                "path": str(path),
                "generation": plan.generation if plan else None,
                "revision": plan.revision if plan else None,
                "files": list(plan.files) if plan else [],
                "total_bytes": plan.total_bytes if plan else None,
                "downloaded_bytes": plan.missing_bytes if plan else None,
            }
        )
        return
    out.print(f"{a.id}: weights ready at {path}", highlight=False, soft_wrap=True)


@models_cli.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the downloaded models: Hugging Face cache and KINEMA_MODEL_PATHS directories."""
    from kinema.engines.loading import human_bytes, is_local_source, stored_models
    from kinema.engines.registry import engine_family, identify_model

    settings = Settings()
    local_dirs = sorted(
        {
            Path(s).expanduser()
            for s in settings.model_paths.values()
            if not s.startswith("builtin:") and is_local_source(s)
        }
    )
    rows: list[dict[str, Any]] = []
    for model in stored_models(settings.hf_cache_dir, local_dirs, identify_model):
        serves = [
            a.id
            for a in list_apps()
            if (status := a.weights_status(settings)) is not None
            and status.present
            and status.path == model.path
        ]
        rows.append(
            {
                "source": model.source,
                "path": str(model.path),
                "revision": model.revision,
                "family": model.family,
                "generation": model.generation,
                "model": engine_family(model.family).label(model.generation) if model.family else "?",
                "size_bytes": model.size_bytes,
                "size": human_bytes(model.size_bytes),
                "serves": serves,
            }
        )
    if as_json:
        out.print_json(data=rows)
        return
    if not rows:
        out.print("no models downloaded yet; get one with `kinema models pull lightricks/ltx-2-fast`")
        return
    table = Table("model", "generation", "size on disk", "serves", "path")
    for row in rows:
        table.add_row(row["source"], row["model"], row["size"], ", ".join(row["serves"]) or "-", row["path"])
    print_table(table)


SERVE_HELP = """Start the API, a worker and the file server in one process.

Configured by KINEMA_* environment variables (or a .env file); the options below override them:


  KINEMA_DATA_DIR       data directory: SQLite task store, outputs, uploads (default ./kinema-data)
  KINEMA_STORAGE_DIR    outputs and uploads (default <data dir>/outputs)
  KINEMA_DATABASE_URL   task store URL, e.g. postgresql+psycopg://user:pw@host/kinema (default: SQLite)
  KINEMA_ADMIN_KEY      the admin API key (default: generated on first start and printed once)
  KINEMA_SECRET_KEY     secret for signed URLs and key hashes (default: generated into the data dir)
  KINEMA_PUBLIC_URL     base URL clients use, for signed links (default: the request's host)
  KINEMA_WORKERS        local-model workers (default 1); worker i owns GPU i and its own warm models
  KINEMA_GPUS           the GPUs for local workers, one each, e.g. 0,1 (overrides KINEMA_WORKERS)
  KINEMA_REMOTE_WORKERS worker threads for provider apps such as Veo (default 4; both 0 = API only)
  KINEMA_GOOGLE_API_KEY your Google key for the Veo apps (or GOOGLE_API_KEY / GEMINI_API_KEY)
  KINEMA_RUN_WAIT_S     how long POST .../run waits before answering 202 (default 60)
  KINEMA_SIGNED_URL_TTL_S  lifetime of signed file URLs in seconds (default 3600)
  KINEMA_UPLOAD_MAX_BYTES, KINEMA_REQUEST_MAX_BYTES  body size limits
"""


@app.command("serve", help=SERVE_HELP)
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (KINEMA_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (KINEMA_PORT, default 8000).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (KINEMA_DATA_DIR).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Local-model workers, worker i on GPU i (KINEMA_WORKERS).")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="GPUs to run local workers on, one each, e.g. 0,1 (KINEMA_GPUS).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    import uvicorn

    from kinema.api.app import create_app

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "data_dir": data_dir,
            "workers": workers,
            "gpus": gpus,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    if settings.local_workers > 0:  # an API-only process never imports torch or diffusers
        quiet_libraries()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    err.print(
        f"kinema serving on http://{settings.host}:{settings.port} "
        f"(data: {settings.data_dir.resolve()}, store: {settings.database.split('://', 1)[0]})",
        highlight=False,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=10,
    )


WORKER_HELP = """Run worker processes that take queued tasks from the server's database.

Point them at the API's database (KINEMA_DATABASE_URL, PostgreSQL for a cluster) and storage, and start one
per machine. With --gpus 0,1 a parent process runs one worker per GPU (each owning its GPU and keeping its
models warm) and restarts any that dies; without it, one worker runs on the CPU (or GPU 0). Each worker
serves every app this machine can run, or those given with --apps, and prefers tasks for models it already
has loaded. --gpus all runs one per GPU the process can see (CUDA_VISIBLE_DEVICES), or one CPU worker when
there is none.

SIGTERM (or Ctrl-C) lets the running task finish for up to KINEMA_WORKER_GRACE_S seconds, then hands it back
to the queue; a second SIGTERM hands it back at once. A worker killed outright loses its lease after
KINEMA_LEASE_S seconds without a heartbeat, and another worker runs the task again (up to
KINEMA_TASK_MAX_ATTEMPTS starts).

\b
Settings (environment, or a .env file):
  KINEMA_DATABASE_URL   the API's task store, e.g. postgresql+psycopg://user:pw@host/kinema
  KINEMA_STORAGE_DIR    shared storage for outputs and uploads (or the S3 settings)
  KINEMA_LEASE_S        seconds without a heartbeat before a task is taken back (default 30)
  KINEMA_WORKER_GRACE_S seconds a stopping worker lets its task finish (default 60)
  KINEMA_WORKER_APPS    the apps to serve, like --apps
  KINEMA_REMOTE_WORKERS threads for provider apps such as Veo (default 4; in the first process only)
  KINEMA_WARM_MODELS    models each process keeps loaded (default 1)
"""


@app.command("worker", help=WORKER_HELP)
def worker(
    gpus: Annotated[
        str | None,
        typer.Option(help="GPUs to run workers on, one process each: 0,1 or all (KINEMA_GPUS)."),
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, help="CPU worker processes to run (without --gpus; default 1).")
    ] = 1,
    apps: Annotated[
        str | None,
        typer.Option(help="Only these apps, e.g. kinema/tiny,lightricks/ltx-2-fast (KINEMA_WORKER_APPS)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (KINEMA_DATA_DIR).")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    from kinema.cli.worker import start_workers, visible_gpus

    if gpus is not None and gpus.strip().lower() == "all":
        gpus = ",".join(map(str, range(visible_gpus()))) or None  # none visible: one CPU worker
    overrides: dict[str, Any] = {
        k: v for k, v in {"gpus": gpus, "data_dir": data_dir, "worker_apps": apps}.items() if v is not None
    }
    settings = Settings(**overrides)
    quiet_libraries()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    try:
        code = start_workers(
            settings, processes=processes, apps=settings.worker_apps or None, log_level=log_level
        )
    except ValueError as exc:
        raise fail(str(exc), USAGE) from None
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point: every refusal (a usage error too) is one line on stderr and exit 2."""
    try:
        status = app(standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `kinema app`: Typer has printed the group's help
            sys.exit(USAGE)
        # A missing or unknown option: one line, not Rich's boxed panel.
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(f"{exc.format_message()}{hint}", USAGE)
        sys.exit(USAGE)
    except ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-C or EOF at a prompt
        fail("aborted", 130)
        sys.exit(130)
    except KinemaError as exc:  # anything not already turned into a message
        fail(exc.message, exit_code_for(exc))
        sys.exit(exit_code_for(exc))
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
