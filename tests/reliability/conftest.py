"""The reliability suite's shared server: API-only (no workers), so accepted tasks stay queued."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kinema.engines.cache import WarmModels
from tests.conftest import LiveServer
from tests.reliability.servers import running_server


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    warm: WarmModels,
) -> Iterator[LiveServer]:
    """One API-only server per test module (a module may override it with its own settings)."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with running_server(root, tiny_model_dir, warm, workers=0, remote_workers=0) as live:
        yield live
