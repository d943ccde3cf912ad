"""Every KINEMA_ name in the deploy files and docs/deploy.md is a kinema setting: Settings ignores unknown
KINEMA_ variables, so a misspelt one would silently do nothing. Names that the cluster work adds in other
branches are listed once, in files.PENDING_SETTINGS."""

from __future__ import annotations

import warnings
from pathlib import Path

from tests.deploy.files import (
    DEPLOY,
    DEPLOY_DOC,
    KINEMA_NAME,
    PENDING_SETTINGS,
    ROOT,
    is_known_kinema_name,
    setting_env_names,
)

SOURCES = [
    *sorted(DEPLOY.rglob("*.yaml")),
    *sorted(DEPLOY.glob("Dockerfile.*")),
    DEPLOY / ".env.example",
    DEPLOY_DOC,
]


def names_in(path: Path) -> set[str]:
    return set(KINEMA_NAME.findall(path.read_text()))


def test_kinema_names_in_deploy_files_and_docs_are_settings() -> None:
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in SOURCES
        for name in names_in(path)
        if not is_known_kinema_name(name)
    }
    assert unknown == set()


def test_settings_are_read_as_the_deploy_files_spell_them() -> None:
    names = setting_env_names()
    assert {"KINEMA_DATABASE_URL", "KINEMA_WORKERS", "KINEMA_REMOTE_WORKERS", "KINEMA_HF_CACHE_DIR"} <= names
    assert "GOOGLE_API_KEY" in names  # an alias choice
    assert not is_known_kinema_name("KINEMA_DATABASE_ULR")


def test_pending_settings_are_still_used() -> None:
    used = set().union(*(names_in(path) for path in SOURCES))
    assert used >= PENDING_SETTINGS
    landed = PENDING_SETTINGS & setting_env_names()
    if landed:
        warnings.warn(f"now kinema settings, prune from PENDING_SETTINGS: {sorted(landed)}", stacklevel=1)
