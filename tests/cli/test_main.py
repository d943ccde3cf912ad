"""The `kinema` command with its output piped, as scripts use it: exit codes, one-line errors, whole lines.

Every test runs the real console script as a subprocess with stdout and stderr piped and no COLUMNS in
the environment, so Rich sees no terminal and would fall back to 80 columns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kinema.apps.registry import list_apps
from tests.conftest import ADMIN_KEY, LiveServer

KINEMA = str(Path(sys.executable).parent / "kinema")
PROVIDER_KEYS = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI")


@pytest.fixture
def piped_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment (PYTHONPATH included) without KINEMA_*, provider keys or a terminal width."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KINEMA_") and k not in (*PROVIDER_KEYS, "COLUMNS", "LINES", "FORCE_COLOR")
    }
    env.update({"KINEMA_DATA_DIR": str(tmp_path / "data"), "KINEMA_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"})
    return env


def kinema(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KINEMA, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, nothing on stdout, and exactly one `error:` line on stderr containing each needle."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


def test_app_list_piped_prints_every_app_id_whole_one_app_per_line(piped_env: dict[str, str]) -> None:
    result = kinema(piped_env, "app", "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split("\t") == ["app", "version", "description", "weights", "available"]
    assert [row.split("\t")[0] for row in rows] == [a.id for a in list_apps()]
    assert all(len(row.split("\t")) == 5 for row in rows)
    assert "…" not in result.stdout
    veo = next(row for row in rows if row.startswith("google/veo-3-1-fast\t"))
    assert veo.endswith("(or GOOGLE_API_KEY / GEMINI_API_KEY) and restart")  # the reason, unwrapped


def test_app_list_through_a_shell_pipe_is_grepable(piped_env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-c", f"{KINEMA} app list | grep -c '^lightricks/ltx-2-fast\t'; exit ${{PIPESTATUS[0]}}"],
        env=piped_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_app_show_piped_keeps_descriptions_on_one_line(piped_env: dict[str, str]) -> None:
    result = kinema(piped_env, "app", "show", "lightricks/ltx-2-fast")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "input:" in lines and "pricing:" in lines
    image = next(line for line in lines if line.startswith("image\t"))
    assert image.split("\t")[3].startswith("Reference / first frame: https:// URL, data: URI")
    assert "4K video+audio\t0.35" in lines
    assert max(len(line) for line in lines) > 80  # nothing was folded to Rich's default width


def test_an_unavailable_app_is_refused_with_exit_2_and_one_unwrapped_line(piped_env: dict[str, str]) -> None:
    result = kinema(piped_env, "app", "run", "google/veo-3-1-fast", "--input", '{"prompt": "clouds"}')
    assert_refused(result, "google/veo-3-1-fast cannot run here", "KINEMA_GOOGLE_API_KEY")
    assert len(result.stderr.strip()) > 80
    assert not (Path(piped_env["KINEMA_DATA_DIR"]) / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("app", "run", "kinema/tiny"), ("Missing option '--input'", "kinema app run --help")),
        (("app", "list", "--bogus"), ("No such option: --bogus",)),
        (("app", "show"), ("Missing argument 'OWNER/APP'",)),
        (("task", "list", "--limit", "0"), ("--limit",)),
        (("app", "show", "nobody/nothing"), ("no app named 'nobody/nothing'",)),
        (("app", "run", "kinema/tiny", "--input", '{"prompt": "x", "duration": 99}'), ("duration",)),
        (("task", "list"), ("KINEMA_API_URL",)),
        (("models", "pull", "kinema"), ("kinema",)),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    piped_env: dict[str, str], args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_refused(kinema(piped_env, *args), *needles)


def test_app_list_json_piped_is_valid_json(piped_env: dict[str, str]) -> None:
    result = kinema(piped_env, "app", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [a["id"] for a in listed] == [a.id for a in list_apps()]


def test_every_command_that_prints_data_takes_json() -> None:
    import typer

    from kinema.cli.main import app

    def leaves(command: object, path: str) -> list[tuple[str, object]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            return [(path, command)]
        return [leaf for name, sub in subcommands.items() for leaf in leaves(sub, f"{path} {name}")]

    commands = leaves(typer.main.get_command(app), "kinema")
    assert len(commands) >= 15
    without = [
        path
        for path, command in commands
        if path not in ("kinema serve", "kinema worker")  # long-running processes: they log, not print data
        and not any("--json" in getattr(p, "opts", ()) for p in getattr(command, "params", ()))
    ]
    assert without == []


# Against a server ----------------------------------------------------------------------------------


@pytest.fixture
def remote_env(piped_env: dict[str, str], live_server: LiveServer) -> dict[str, str]:
    return {**piped_env, "KINEMA_API_URL": live_server.url, "KINEMA_API_KEY": ADMIN_KEY}


def test_server_refusals_exit_2_and_failures_to_reach_it_exit_1(remote_env: dict[str, str]) -> None:
    assert_refused(kinema(remote_env, "task", "get", "tsk_nope"), "tsk_nope")
    assert_refused(kinema({**remote_env, "KINEMA_API_KEY": "kin_wrong"}, "task", "list"), "invalid API key")
    unavailable = kinema(remote_env, "app", "run", "google/veo-3-1", "--input", '{"prompt": "x"}')
    assert_refused(unavailable, "google/veo-3-1 cannot run here")  # the server's 503 app_unavailable
    gone = kinema({**remote_env, "KINEMA_API_URL": "http://127.0.0.1:9"}, "task", "list")
    assert gone.returncode == 1
    assert len(gone.stderr.strip().splitlines()) == 1
    assert "cannot reach the kinema server at http://127.0.0.1:9" in gone.stderr


def test_remote_commands_print_json(remote_env: dict[str, str]) -> None:
    keys = kinema(remote_env, "keys", "list", "--json")
    assert keys.returncode == 0, keys.stderr
    assert [k["name"] for k in json.loads(keys.stdout)] == ["admin (KINEMA_ADMIN_KEY)"]
    created = kinema(remote_env, "keys", "create", "ci", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["name"] == "ci" and key["key"].startswith("kin_")
    revoked = kinema(remote_env, "keys", "revoke", key["id"], "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    tasks = kinema(remote_env, "task", "list", "--json")
    assert tasks.returncode == 0, tasks.stderr
    assert json.loads(tasks.stdout) == {"data": [], "next_cursor": None}
