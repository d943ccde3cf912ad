"""The deploy files as the tests read them: paths, YAML documents, Dockerfile instructions, the names of
kinema's settings, and the names the cluster work adds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from kinema.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# Settings the deploy files use that the cluster work adds in other branches (S3 storage). Each is allowed
# wherever a KINEMA_ name is checked; prune this set as they land in kinema.settings (a test warns when
# one already has).
PENDING_SETTINGS: frozenset[str] = frozenset()

# `kinema` commands the deploy files run that other branches add (none now: `kinema worker` has landed).
PENDING_COMMANDS: frozenset[tuple[str, ...]] = frozenset()

KINEMA_NAME = re.compile(r"\bKINEMA_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


@cache
def setting_env_names() -> frozenset[str]:
    """Every environment variable kinema.settings.Settings reads: KINEMA_<FIELD> and each field's aliases."""
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        names.add(f"KINEMA_{field.upper()}")
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return frozenset(names)


def install_script_names() -> frozenset[str]:
    """The KINEMA_ variables scripts/install.sh reads (KINEMA_TORCH_SPEC, ...): real names, not settings."""
    return frozenset(KINEMA_NAME.findall((ROOT / "scripts" / "install.sh").read_text()))


def is_known_kinema_name(name: str) -> bool:
    """A KINEMA_ name is a setting (a nested one as KINEMA_FIELD__KEY), pending, or install.sh's."""
    head = name.split("__", 1)[0]
    return head in setting_env_names() | PENDING_SETTINGS or name in install_script_names()


@cache
def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file (parsed once; tests read them, never change them)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s (kustomization.yaml excluded), with its file."""
    return [
        (path, doc)
        for path in k8s_files()
        if path.name != "kustomization.yaml"
        for doc in yaml_documents(path)
    ]


def env_example() -> dict[str, str]:
    """deploy/.env.example's assignments, commented-out examples (`# NAME=...`) included with their value."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip()
    return values


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (comments dropped, `\\` continuations joined)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            keyword, _, args = " ".join(pending).partition(" ")
            out.append(Instruction(start, keyword.upper(), args.strip()))
            pending = []
    return out


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV assignments of a Dockerfile (KEY=value form)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for match in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', ins.args):
                env[match.group(1)] = match.group(2).strip('"')
    return env
