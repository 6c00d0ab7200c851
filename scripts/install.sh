#!/usr/bin/env bash
# Create .venv and install stemfleet with the worker and dev extras.
# Never lets pip resolve torch on its own: where torch is not importable it installs
# ${TORCH_SPEC:-torch==2.13.0} first (a CPU build here; a GPU image sets TORCH_SPEC or
# preinstalls its CUDA torch), so the `torch` requirement of the worker extra is already met.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-worker,dev}
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/_}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The browser tests drive Debian's Chromium through its chromedriver (nothing is downloaded at
# test time): install both where missing.
if [[ ",$EXTRAS," == *",dev,"* ]] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (for the browser tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: the browser tests need /usr/bin/chromium and /usr/bin/chromedriver:" \
      "sudo apt-get install chromium chromium-driver" >&2
  fi
fi
if [ -f "$stamp" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
if [[ ",$EXTRAS," == *",worker,"* ]] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing ${TORCH_SPEC:-torch==2.13.0} (set TORCH_SPEC to choose another build)"
  .venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
rm -f .venv/.installed-*
touch "$stamp"
