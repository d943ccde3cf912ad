"""`kinema` with the test-only apps registered: `python tests/kinema_test_apps.py serve|worker ...`.

The cluster tests and bench/scale.py start their API and worker processes through this file, so those
processes (and the children a supervising `kinema worker` starts with the same command) know test/instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.instant_app import register

register()

from kinema.cli.main import main  # noqa: E402

if __name__ == "__main__":
    main()
