"""Finding model weights: a local directory, or a Hugging Face repo in the local cache; downloading them.

Which files an app needs depends on its variant and the repo's layout, which the engine family's
WeightsPlanner knows (for LTX, kinema.engines.ltx_recipes: the fast app takes the distilled transformer and
never the full one). So a download reads the repo's small files first
(model_index.json and the component configs), plans the layout, says how big it is, and then fetches only
the needed files. Presence checks read the cache directory only: no network, no hashing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinema.engines.base import LayoutError, WeightsPlan, WeightsPlanner
from kinema.errors import ModelNotAvailable

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Folders whose files are only configs or vocabularies: no weights to look for.
WEIGHTLESS = frozenset({"scheduler", "tokenizer", "processor"})


@dataclass(frozen=True)
class WeightsStatus:
    """Whether an app's weights are on this machine, and what a download would cost when they are not."""

    source: str
    present: bool
    path: Path | None = None
    generation: str | None = None
    download_bytes: int | None = None  # what is left to fetch (exact when the repo listing is cached)
    download_exact: bool = False  # download_bytes from the repo's listing, not an estimate
    reason: str | None = None  # why not present, when the weights are there but unusable


@dataclass(frozen=True)
class DownloadPlan:
    """The files a variant needs from a hub repo at one commit, and their sizes."""

    repo: str
    revision: str
    generation: str | None
    variant: str
    files: tuple[str, ...]
    total_bytes: int
    missing_bytes: int  # the part not already in the cache
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredModel:
    """A model on disk: a hub repo's snapshot in the cache, or a local directory."""

    source: str  # the repo id, or the directory
    path: Path
    revision: str | None
    family: str | None  # the engine family that can run it, when one recognises it
    generation: str | None
    size_bytes: int


def human_bytes(n: int) -> str:
    """A byte count as people read it (decimal units, as the hub shows sizes)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - the loop returns


def is_local_source(source: str) -> bool:
    """A source is a local directory when it looks like a path rather than an `org/name` model id."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def hub_cache_dir(cache_dir: Path | None) -> Path:
    """The Hugging Face cache kinema uses: settings.hf_cache_dir, else the hub's own (HF_HUB_CACHE)."""
    if cache_dir is not None:
        return cache_dir
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_folder(repo: str, cache_dir: Path | None) -> Path:
    return hub_cache_dir(cache_dir) / ("models--" + repo.replace("/", "--"))


def _cached_snapshot(repo: str, cache_dir: Path | None, revision: str = "main") -> tuple[Path, str] | None:
    """The cached snapshot folder a revision points at, read from refs/ (no network)."""
    folder = _repo_folder(repo, cache_dir)
    try:
        commit = (folder / "refs" / revision).read_text().strip()
    except OSError:
        return None
    snapshot = folder / "snapshots" / commit
    return (snapshot, commit) if snapshot.is_dir() else None


def _cached_listing(repo: str, cache_dir: Path | None, commit: str) -> dict[str, int] | None:
    """The repo's file list with sizes, as huggingface_hub cached it when downloading (trees/<commit>)."""
    data = read_json(_repo_folder(repo, cache_dir) / "trees" / f"{commit}.json")
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    return {path: int(info.get("lfs_size") or info.get("size") or 0) for path, info in files.items()}


def _disk_files(model_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file() or p.is_symlink()
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when it is missing or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_configs(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Each component folder's config (config.json, or scheduler_config.json for the scheduler)."""
    configs: dict[str, dict[str, Any]] = {}
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        for name in ("config.json", "scheduler_config.json"):
            if (sub / name).is_file():
                configs[sub.name] = read_json(sub / name)
                break
    return configs


def save_model_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """A model directory written atomically: write() fills a staging folder beside target, which is then
    renamed into place. A directory already there (with its model_index.json) is kept as it is."""
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        write(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _missing_weights(model_dir: Path, plan: WeightsPlan, needed: list[str]) -> list[str]:
    """What the layout loads that is not on disk: listed files, index shards, weight folders left empty."""
    missing = [p for p in needed if not (model_dir / p).is_file()]
    folders = {p.split("/", 1)[0] for p in needed if "/" in p} - WEIGHTLESS
    for folder in sorted(folders):
        sub = model_dir / folder
        if not sub.is_dir():
            continue
        for index in sub.glob("*.index.json"):
            shards = read_json(index).get("weight_map", {})
            missing += [f"{folder}/{s}" for s in sorted(set(shards.values())) if not (sub / s).is_file()]
        if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in sub.iterdir()):
            missing.append(f"{folder}/ (no weights)")
    missing += [p for p in plan.single_files if not (model_dir / p).is_file()]
    return sorted(set(missing))


def plan_files(
    model_dir: Path, planner: WeightsPlanner, variant: str, listing: dict[str, int] | None = None
) -> tuple[WeightsPlan, list[str]]:
    """What a variant loads from a directory and the files it needs (from the repo listing when known)."""
    files = sorted(listing) if listing is not None else _disk_files(model_dir)
    plan = planner.plan(model_dir, files, variant)
    return plan, list(plan.needed)


def _status_of_dir(
    source: str, model_dir: Path, planner: WeightsPlanner, variant: str, listing: dict[str, int] | None
) -> WeightsStatus:
    if not (model_dir / "model_index.json").is_file():
        return WeightsStatus(
            source, False, reason=f"{model_dir} holds no diffusers model (no model_index.json)"
        )
    try:
        plan, needed = plan_files(model_dir, planner, variant, listing)
    except LayoutError as exc:
        return WeightsStatus(source, False, model_dir, reason=str(exc))
    missing = _missing_weights(model_dir, plan, needed)
    if not missing:
        return WeightsStatus(source, True, model_dir, plan.generation)
    download = None
    if listing is not None:
        download = sum(listing[p] for p in needed if p in listing and not (model_dir / p).is_file())
    return WeightsStatus(
        source,
        False,
        model_dir,
        plan.generation,
        download_bytes=download if download is not None else planner.estimate_bytes(plan.generation, variant),
        download_exact=download is not None,
        reason=f"missing: {', '.join(missing[:3])}"
        + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""),
    )


def weights_status(
    source: str, planner: WeightsPlanner, variant: str, cache_dir: Path | None
) -> WeightsStatus:
    """Whether `source` (a local directory or a cached hub id) holds what the variant needs; offline."""
    if source.startswith("builtin:"):
        return WeightsStatus(source, True)
    if is_local_source(source):
        return _status_of_dir(source, Path(source).expanduser(), planner, variant, None)
    cached = _cached_snapshot(source, cache_dir)
    if cached is None or not (cached[0] / "model_index.json").is_file():  # none yet, or interrupted: estimate
        path = cached[0] if cached is not None else None
        return WeightsStatus(source, False, path, download_bytes=planner.estimate_bytes(None, variant))
    snapshot, commit = cached
    return _status_of_dir(source, snapshot, planner, variant, _cached_listing(source, cache_dir, commit))


def pull_hint(app_id: str) -> str:
    """How a user gets an app's weights."""
    return (
        f"download them with `kinema models pull {app_id}`, or set KINEMA_ALLOW_DOWNLOAD=1 to fetch them on"
        " first run"
    )


def resolve_weights(
    app_id: str,
    source: str,
    planner: WeightsPlanner,
    *,
    variant: str,
    allow_download: bool,
    cache_dir: Path | None = None,
    on_plan: Callable[[DownloadPlan], None] | None = None,
) -> Path:
    """The local directory holding an app's weights, downloading (only the needed files) when allowed."""
    if is_local_source(source):
        path = Path(source).expanduser()
        if not (path / "model_index.json").is_file():
            raise ModelNotAvailable(
                f"{app_id}: {path} is not a diffusers model directory (no model_index.json)",
                public_message=f"the weights for {app_id} are not installed on this server",
            )
        return path
    status = weights_status(source, planner, variant, cache_dir)
    if status.present and status.path is not None:
        return status.path
    if not allow_download:
        size = f", about {human_bytes(status.download_bytes)}" if status.download_bytes else ""
        raise ModelNotAvailable(
            f"the weights for {app_id} ({source}{size}) are not on this machine; {pull_hint(app_id)}",
            details={"model": source},
        )
    return download_weights(source, planner, variant=variant, cache_dir=cache_dir, on_plan=on_plan)


def gated_message(repo: str) -> str:
    """What to do about a gated repo the hub refused."""
    return (
        f"{repo} is gated: accept its licence on the model page (https://huggingface.co/{repo}) with your "
        "Hugging Face account, then set HF_TOKEN to a token of that account (https://huggingface.co/settings/"
        "tokens) and try again"
    )


def _config_paths(model_index: dict[str, Any], files: dict[str, int]) -> list[str]:
    """The configs a planner reads: each pipeline component's, never a folder the pipeline does not name
    (LTX's transformer_full/ is read only when there is no transformer/)."""
    folders = [k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
    if "transformer" not in folders:
        folders.append("transformer_full")
    wanted = [f"{folder}/{name}" for folder in folders for name in ("config.json", "scheduler_config.json")]
    return [p for p in wanted if p in files]


def plan_download(
    repo: str,
    planner: WeightsPlanner,
    variant: str,
    cache_dir: Path | None = None,
    revision: str | None = None,
) -> DownloadPlan:
    """Read a hub repo's file list and small files, and plan what the variant needs (network, small files)."""
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha or revision or "main"
    files = {s.rfilename: int((s.lfs.size if s.lfs else s.size) or 0) for s in info.siblings or []}
    if "model_index.json" not in files:
        raise LayoutError(f"{repo} is not a diffusers model (no model_index.json)")
    cache = str(cache_dir) if cache_dir is not None else None
    # Asked by branch name, so the cache records refs/main -> commit, which the offline status reads.
    index = Path(hf_hub_download(repo, "model_index.json", revision=revision or "main", cache_dir=cache))
    snapshot = index.parent
    for path in _config_paths(read_json(index), files):
        hf_hub_download(repo, path, revision=commit, cache_dir=cache)
    plan, needed = plan_files(snapshot, planner, variant, files)
    total = sum(files[p] for p in needed)
    missing = sum(files[p] for p in needed if not (snapshot / p).is_file())
    return DownloadPlan(repo, commit, plan.generation, variant, tuple(needed), total, missing, plan.notes)


def download_weights(
    source: str,
    planner: WeightsPlanner,
    *,
    variant: str,
    cache_dir: Path | None = None,
    on_plan: Callable[[DownloadPlan], None] | None = None,
) -> Path:
    """Download the files a variant needs into the Hugging Face cache, with the hub's progress bars.

    on_plan hears the plan (files and sizes) before any weights are fetched. An interrupted file is resumed
    with a Range request by huggingface_hub within the run; files already complete are never fetched again.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        plan = plan_download(source, planner, variant, cache_dir)
        log.info(
            "downloading %s (%s, %d files, %s to fetch)",
            source,
            variant,
            len(plan.files),
            human_bytes(plan.missing_bytes),
        )
        if on_plan is not None:
            on_plan(plan)
        return Path(
            snapshot_download(
                source,
                revision=plan.revision,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                allow_patterns=list(plan.files),
            )
        )
    except GatedRepoError as exc:
        raise ModelNotAvailable(gated_message(source), details={"model": source}) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotAvailable(
            f"{source} is not on the Hugging Face hub, or it is private (set HF_TOKEN to a token that can"
            " read it)",
            details={"model": source},
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise ModelNotAvailable(gated_message(source), details={"model": source}) from exc
        raise ModelNotAvailable(
            f"could not download {source}: {exc}; run the same command again to continue",
            details={"model": source},
        ) from exc
    except LayoutError as exc:
        raise ModelNotAvailable(f"{source}: {exc}", details={"model": source}) from exc
    except Exception as exc:  # network and disk errors come in many kinds (httpx, OSError, the hub's own)
        raise ModelNotAvailable(
            f"could not download {source}: {exc}; run the same command again to continue (finished files"
            " are kept)",
            details={"model": source},
        ) from exc


def stored_models(
    cache_dir: Path | None,
    local_dirs: list[Path],
    identify: Callable[[Path], tuple[str, str | None] | None],
) -> list[StoredModel]:
    """The diffusers models on disk: hub snapshots in the cache (scan_cache_dir) and local directories.

    identify names the family (and generation) a model directory holds, or None when no family knows it.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    found: list[StoredModel] = []
    try:
        repos = scan_cache_dir(hub_cache_dir(cache_dir)).repos
    except CacheNotFound:
        repos = frozenset()
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            snapshot = Path(rev.snapshot_path)
            if not (snapshot / "model_index.json").is_file():
                continue
            family, generation = identify(snapshot) or (None, None)
            found.append(
                StoredModel(repo.repo_id, snapshot, rev.commit_hash, family, generation, rev.size_on_disk)
            )
    for path in local_dirs:
        if (path / "model_index.json").is_file():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            family, generation = identify(path) or (None, None)
            found.append(StoredModel(str(path), path, None, family, generation, size))
    return found
