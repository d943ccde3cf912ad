#!/usr/bin/env bash
# Install kinema into ./.venv: the right torch wheel first (CUDA if an NVIDIA GPU is present, else CPU),
# then kinema itself. `--dev` adds the test tools, FFmpeg's ffprobe, PostgreSQL and Chromium (used by the tests).
#
#   KINEMA_TORCH_SPEC      torch requirement to install (default: torch==2.13.0)
#   KINEMA_TORCH_INDEX_URL extra index for torch wheels, e.g. https://download.pytorch.org/whl/cu128
#                          or https://download.pytorch.org/whl/cpu
#   KINEMA_PYTHON          interpreter to build the venv with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: scripts/install.sh [--dev]" >&2; exit 2 ;;
  esac
done

python=${KINEMA_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip setuptools wheel

torch_spec=${KINEMA_TORCH_SPEC:-torch==2.13.0}
torch_args=()
if [ -n "${KINEMA_TORCH_INDEX_URL:-}" ]; then
  torch_args+=(--extra-index-url "$KINEMA_TORCH_INDEX_URL")
fi
if .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
else
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing $torch_spec (CUDA build)"
  else
    echo "no NVIDIA GPU: installing $torch_spec (CPU build where the index offers one)"
  fi
  # torch goes first so that nothing below pulls a different (multi-GB CUDA) build in as a dependency.
  "${pip[@]}" install -q "${torch_args[@]}" "$torch_spec"
fi

extras=""
if command -v nvidia-smi >/dev/null 2>&1; then extras="gpu"; fi
if [ "$dev" = 1 ]; then extras="${extras:+$extras,}dev"; fi
"${pip[@]}" install -q -e ".${extras:+[$extras]}"

if [ "$dev" = 1 ]; then
  # The tests read MP4s with ffprobe, start a throwaway PostgreSQL server from Debian's binaries and drive
  # Debian's Chromium with Playwright for the playground (no browser download).
  need=()
  command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    apt=(apt-get)
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then apt=(sudo env DEBIAN_FRONTEND=noninteractive apt-get); else apt=(); fi
    fi
    if [ ${#apt[@]} -gt 0 ]; then
      "${apt[@]}" update -qq
      DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "warning: the tests need ${need[*]}; install them (e.g. apt-get install ${need[*]})" >&2
    fi
  fi
fi
echo "kinema installed: $(.venv/bin/kinema --help >/dev/null && echo .venv/bin/kinema)"
