#!/usr/bin/env bash
# Create .venv (once) and install diffkit with its test extras, the optional diffusers extra
# (diffusers + transformers + peft: the interop tests compare with them) and the video extra (PyAV, whose
# wheels bundle FFmpeg: .mp4 / .mkv in diffkit.video). Idempotent and quiet.
# torch is pinned to 2.13.0: on these machines that is a local CPU build; any other
# request would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,diffusers,video]" "torch==2.13.0"
