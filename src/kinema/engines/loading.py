"""Finding model weights: a local directory, or a Hugging Face model id in the local cache."""

from __future__ import annotations

from pathlib import Path

from kinema.errors import ModelNotAvailable


def is_local_source(source: str) -> bool:
    """A source is a local directory when it looks like a path rather than an `org/name` model id."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def resolve_weights(app_id: str, source: str, *, allow_download: bool, cache_dir: Path | None = None) -> Path:
    """The local directory holding a diffusers-format model, downloading only when allowed."""
    if is_local_source(source):
        path = Path(source).expanduser()
        if not (path / "model_index.json").is_file():
            raise ModelNotAvailable(
                f"{app_id}: {path} is not a diffusers model directory (no model_index.json)",
                public_message=f"the weights for {app_id} are not installed on this server",
            )
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        if not allow_download:
            raise ModelNotAvailable(
                f"the weights for {app_id} ({source}) are not on this machine; download them with"
                f" `kinema models pull {app_id}`, or set KINEMA_ALLOW_DOWNLOAD=1 to fetch them on first run",
                details={"model": source},
            ) from exc
    return download_weights(source, cache_dir=cache_dir)


def download_weights(source: str, *, cache_dir: Path | None = None) -> Path:
    """Download a model into the Hugging Face cache, showing the hub's progress bars."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, cache_dir=cache_dir))
    except Exception as exc:  # the hub raises many kinds: network, auth, gated repo
        raise ModelNotAvailable(f"could not download {source}: {exc}", details={"model": source}) from exc
