#!/usr/bin/env bash
# A plain (non-editable) install works: build the wheel, install it into a venv that sees the
# already-installed dependencies but not this checkout, and from another directory run the main
# job and load the shipped weights (sha256 checked by visualtok.load).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --no-deps "$repo" -w "$work/dist"
python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$work"/dist/visualtok-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import sys
from pathlib import Path

import visualtok

where = Path(visualtok.__file__).resolve()
assert "site-packages" in str(where) and str(where).startswith(sys.prefix), where
tok = visualtok.load("titok_photo128")
gpt = visualtok.load("gpt_photo128")
print(f"wheel install: {where.parent}; loaded {tok.model_name} and {gpt.model_name}")
PY
"$work/venv/bin/visualtok" reconstruct --out "$work/out"
test -s "$work/out/astronaut_reconstruction.png"
echo "wheel check passed"
