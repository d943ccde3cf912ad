"""Print kinema's requirements for a set of extras, read from pyproject.toml, for image builds.

    python scripts/requirements.py gpu,postgres,s3                   > requirements.txt   # a worker
    python scripts/requirements.py --without-model-stack postgres,s3 > requirements.txt   # the API

The Dockerfiles in deploy/ install these first (a layer that survives source edits), then kinema itself with
--no-deps. The API's list leaves out torch and the libraries that load models, which only workers import, so
the API image carries no torch and no CUDA; tests/deploy checks that an API-only server starts and takes a
task with those modules unimportable. An extra pyproject.toml does not define is an error, not a warning:
an image without the S3 or PostgreSQL driver would only fail at run time.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Distribution names (PEP 503 normalized) an API-only process never imports: the workers load models.
MODEL_STACK = frozenset(
    {"torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "tokenizers"}
)

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?")


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras: list[str], *, model_stack: bool = True, pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement lines of kinema with `extras` (without MODEL_STACK unless model_stack)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    for line in [
        *project["dependencies"],
        *(line for extra in extras for line in extra_lines(optional, extra)),
    ]:
        match = NAME.match(line)
        if match is None:
            raise ValueError(f"cannot read requirement {line!r}")
        name = normalized(match.group(1))
        if name == normalized(project["name"]):
            # "kinema[postgres]" inside an extra: list what that extra needs, not kinema itself
            nested = [extra.strip() for extra in (match.group(3) or "").split(",") if extra.strip()]
            more = requirements(nested, model_stack=model_stack, pyproject=pyproject)
            out += [line for line in more if line not in out]
        elif (model_stack or name not in MODEL_STACK) and line not in out:
            out.append(line)
    return out


def extra_lines(optional: dict[str, list[str]], extra: str) -> list[str]:
    """The requirement lines of one extra."""
    if extra not in optional:
        raise KeyError(f"pyproject.toml has no extra {extra!r} (it has: {', '.join(sorted(optional))})")
    return optional[extra]


def main(argv: list[str]) -> int:
    model_stack = "--without-model-stack" not in argv
    extras = [extra for arg in argv if not arg.startswith("--") for extra in arg.split(",") if extra]
    try:
        lines = requirements(extras, model_stack=model_stack)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
