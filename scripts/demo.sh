#!/usr/bin/env bash
# `make demo`: separate a generated 10-second song into stems with the embedded default (a local
# Postgres, the API, the scaler starting a local worker), then print where the stems are.
#
#   DEMO_MODEL=htdemucs_ft ./scripts/demo.sh     # another Demucs model (default htdemucs)
#   DEMO_OUT=/some/folder ./scripts/demo.sh      # where the stems go (default ./demo-out)
#
# The default model's weights are downloaded once (about 80 MB, Demucs' own loader). Without
# internet access that fails: the demo says so and runs Demucs' tiny untrained test model
# instead, which shows the whole pipeline but whose stems are not meaningful.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install.sh
PY=.venv/bin/python
MODEL=${DEMO_MODEL:-htdemucs}
OUT=${DEMO_OUT:-$PWD/demo-out}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stemfleet-demo-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SONG="$WORK/demo-song.wav"
"$PY" scripts/sample_clip.py "$SONG" --seconds 10

if [ "$MODEL" != "demucs_unittest" ] && [ -z "${STEMFLEET_MODEL_REPO:-}" ]; then
  echo "fetching the $MODEL weights (once; they stay in the torch hub cache)..."
  if ! "$PY" - "$MODEL" <<'EOF'
import os
import socket
import sys

try:  # a quick look first: offline, the hub client retries for half a minute
    socket.create_connection(("huggingface.co", 443), timeout=5).close()
except OSError as exc:
    print(f"  cannot reach huggingface.co ({exc}): looking in the local caches", file=sys.stderr)
    os.environ["HF_HUB_OFFLINE"] = "1"

from demucs.pretrained import get_model

try:
    get_model(sys.argv[1])
except Exception as exc:  # hub down, proxy, disk full...
    print(f"  download failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
  then
    cat <<EOF

*** The $MODEL weights could not be downloaded (no internet access?). ***
The demo goes on with demucs_unittest: Demucs' tiny UNTRAINED test model. It runs the whole
pipeline (queue, worker, encoding, download) but its stems are NOT meaningful separations.
For real stems offline, copy a model folder here and point STEMFLEET_MODEL_REPO at it
(python scripts/fetch_model.py --model $MODEL --dest DIR on a connected machine), then run
DEMO_MODEL=$MODEL make demo again.

EOF
    MODEL=demucs_unittest
  fi
fi

echo "separating $SONG with $MODEL..."
STEMFLEET_MODEL="$MODEL" .venv/bin/stemfleet separate "$SONG" --model "$MODEL" --out "$OUT"
echo
echo "stems of the demo song ($MODEL):"
ls -l "$OUT/demo-song"
if [ "$MODEL" = "demucs_unittest" ]; then
  echo "(demucs_unittest is untrained: these files show the pipeline works, not real stems)"
fi
echo
echo "In a browser: run .venv/bin/stemfleet up and open the link it prints: drop a song in, watch"
echo "it go through the queue, play and mix its stems."
