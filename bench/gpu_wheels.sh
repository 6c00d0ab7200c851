#!/usr/bin/env bash
# The Python packages bench/gpu.sh needs that a bare GPU machine's image lacks, as wheels for
# CPython 3.12 on x86-64 Linux, downloaded HERE (where pip reaches the package index) into a
# folder that travels with the working tree (default .whl, which must be git-ignored, e.g. in
# .git/info/exclude). bench/gpu.sh installs them there with `pip --no-index` when it finds them.
# Versions are this checkout's venv's (make install); torch, numpy, pyyaml, psutil, tqdm, einops
# and rich are taken from the machine's image.
#
#   bench/gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
PACKAGES="demucs julius lameenc sphn soundfile cffi pycparser psycopg psycopg-binary psycopg-pool
pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
structlog platformdirs typing-extensions"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two stop the install there
for name in $PACKAGES; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    spec=$name${version:+==$version}
    platforms=""
    for n in 17 24 27 28 31 34 35; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp $platforms --platform manylinux2014_x86_64 --platform any \
        -d "$DEST" "$spec"
done
du -sh "$DEST"
