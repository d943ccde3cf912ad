"""deploy/Dockerfile.api and deploy/Dockerfile.worker, read without Docker: pinned bases, a non-root user,
what each runs, the build context .dockerignore lets through, scripts/requirements.py, and the API image's
promise that an API-only server needs none of the model stack."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.files import DEPLOY, DOCKERFILES, ROOT, Instruction, dockerfile, dockerfile_env

API = DEPLOY / "Dockerfile.api"
WORKER = DEPLOY / "Dockerfile.worker"


def requirements_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kinema_requirements", ROOT / "scripts" / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return {
        name: value
        for ins in instructions
        if ins.keyword == "ARG" and "=" in ins.args
        for name, value in [ins.args.split("=", 1)]
    }


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list)
    return [str(word) for word in value]


def test_dockerfiles_are_the_api_and_the_worker() -> None:
    assert DOCKERFILES == [API, WORKER]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_version(path: Path) -> None:
    instructions = dockerfile(path)
    args = arg_defaults(instructions)
    stages: set[str] = set()
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = ins.args.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
        if len(words) == 3:
            stages.add(words[2])
        if image in stages:
            continue
        name, _, tag = image.rpartition(":")
        assert name and re.match(r"^\d+\.\d+\.\d+", tag), f"{path.name}: {image} is not pinned to a version"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(path: Path) -> None:
    users = [ins.args for ins in final_stage(dockerfile(path)) if ins.keyword == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_api_image_serves_api_only_and_checks_its_health() -> None:
    instructions = final_stage(dockerfile(API))
    env = dockerfile_env(instructions)
    assert env["KINEMA_WORKERS"] == env["KINEMA_REMOTE_WORKERS"] == "0"
    assert env["KINEMA_HOST"] == "0.0.0.0"
    (healthcheck,) = [ins for ins in instructions if ins.keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck.args
    (cmd,) = [ins for ins in instructions if ins.keyword == "CMD"]
    assert exec_form(cmd) == ["kinema", "serve"]
    build = " ".join(ins.args for ins in dockerfile(API) if ins.keyword == "RUN")
    assert "--without-model-stack" in build and "torch" not in build
    assert arg_defaults(dockerfile(API))["EXTRAS"] == "postgres,s3"


def test_worker_image_installs_cuda_torch_before_kinema() -> None:
    instructions = dockerfile(WORKER)
    args = arg_defaults(instructions)
    assert "/whl/cu" in args["TORCH_INDEX_URL"]
    assert args["EXTRAS"] == "gpu,postgres,s3"
    runs = [ins.args for ins in instructions if ins.keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if "TORCH_INDEX_URL" in run)
    kinema_step = next(i for i, run in enumerate(runs) if "scripts/requirements.py" in run)
    assert torch_step < kinema_step
    final = final_stage(instructions)
    assert any("ffmpeg" in ins.args for ins in final if ins.keyword == "RUN")
    assert [exec_form(ins) for ins in final if ins.keyword == "VOLUME"] == [["/models"]]
    assert dockerfile_env(final)["KINEMA_HF_CACHE_DIR"].startswith("/models/")
    (cmd,) = [ins for ins in final if ins.keyword == "CMD"]
    assert exec_form(cmd) == ["kinema", "worker", "--gpus", "all"]


def dockerignore_includes(path: str) -> bool:
    """Whether .dockerignore lets `path` (relative, POSIX) into the build context: the last match decides."""
    included = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            for part in re.split(r"(\*\*)", pattern)
        )
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            included = negate
    return included


def test_build_context_holds_what_the_images_copy_and_nothing_else() -> None:
    for path in DOCKERFILES:
        for ins in dockerfile(path):
            if ins.keyword == "COPY" and "--from" not in ins.args:
                for source in ins.args.split()[:-1]:
                    files = (
                        [source]
                        if (ROOT / source).is_file()
                        else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
                    )
                    assert files and all(dockerignore_includes(f) for f in files), f"{path.name}: {source}"
    for left_out in (
        ".venv/bin/python",
        "tests/conftest.py",
        "kinema-data/kinema.db",
        ".git/HEAD",
        "src/kinema/__pycache__/settings.cpython-311.pyc",
        "deploy/compose.yaml",
    ):
        assert not dockerignore_includes(left_out), left_out


def test_requirements_follow_pyproject_and_leave_the_model_stack_to_workers() -> None:
    script = requirements_script()
    worker = script.requirements(["gpu", "postgres"])
    api = script.requirements(["postgres"], model_stack=False)
    names = {script.normalized(script.NAME.match(line).group(1)) for line in api}
    assert not names & script.MODEL_STACK
    assert {"fastapi", "uvicorn", "sqlalchemy", "psycopg", "huggingface-hub"} <= names
    assert any(line.startswith("torch") for line in worker) and any("sentencepiece" in w for w in worker)
    assert set(api) < set(worker)
    # an extra that follows kinema[postgres] lists psycopg, never kinema itself
    dev = script.requirements(["dev"])
    assert any(line.startswith("psycopg") for line in dev) and not any(
        line.startswith("kinema") for line in dev
    )
    with pytest.raises(KeyError, match="no extra 'nope'"):
        script.requirements(["nope"])
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "requirements.py"), "--without-model-stack", "postgres"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == api


# Run in a fresh interpreter where the model stack cannot be imported, as in the API image.
API_ONLY_CHECK = textwrap.dedent(
    """
    import base64, io, sys
    from importlib.abc import MetaPathFinder

    blocked = set(sys.argv[1].split(","))

    class NotInTheImage(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the API image)", name=name)
            return None

    sys.meta_path.insert(0, NotInTheImage())

    from fastapi.testclient import TestClient
    from PIL import Image
    from kinema.api.app import create_app
    from kinema.settings import Settings

    settings = Settings(
        data_dir=sys.argv[2], workers=0, remote_workers=0, admin_key="kin_test", _env_file=None
    )
    auth = {"Authorization": "Bearer kin_test"}
    png = io.BytesIO()
    Image.new("RGB", (64, 36), "teal").save(png, format="PNG")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/").status_code == 200
        assert client.get("/v1/apps", headers=auth).status_code == 200
        assert client.get("/v1/apps/lightricks/ltx-2-fast", headers=auth).status_code == 200
        image = {"file": ("in.png", png.getvalue(), "image/png")}
        upload = client.post("/v1/files", headers=auth, files=image)
        assert upload.status_code in (200, 201), upload.text
        data_uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
        run = client.post(
            "/v1/apps/kinema/tiny/run?wait=false", headers=auth, json={"prompt": "fog", "image": data_uri}
        )
        assert run.status_code == 202, run.text
        assert client.get("/v1/tasks/" + run.json()["id"], headers=auth).json()["status"] == "queued"
        assert "kinema_queue_depth" in client.get("/metrics").text
    loaded = sorted(name for name in blocked if name in sys.modules)
    assert not loaded, loaded
    print("api-only ok")
    """
)


def test_api_only_server_runs_without_the_model_stack(tmp_path: Path) -> None:
    blocked = ",".join(sorted(requirements_script().MODEL_STACK))  # their import names are the same
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINEMA_")}
    result = subprocess.run(
        [sys.executable, "-c", API_ONLY_CHECK, blocked, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0 and "api-only ok" in result.stdout, result.stderr[-3000:]
