"""The deploy YAML is yamllint-clean under the repo's .yamllint.yaml (run `yamllint deploy` to see why)."""

from __future__ import annotations

from pathlib import Path

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.files import DEPLOY, ROOT

YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_is_lint_clean(path: Path) -> None:
    config = YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    problems = [f"{p.line}:{p.column} {p.message} ({p.rule})" for p in linter.run(path.read_text(), config)]
    assert problems == []


def test_lint_covers_compose_and_kubernetes() -> None:
    assert DEPLOY / "compose.yaml" in YAML_FILES
    assert len([p for p in YAML_FILES if "k8s" in p.parts]) >= 8
