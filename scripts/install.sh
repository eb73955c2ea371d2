#!/usr/bin/env bash
# Install llamactl and everything it needs into a virtual environment (created when missing).
#   usage: scripts/install.sh [VENV_DIR]          (default .venv; PYTHON picks the interpreter)
# Steps:
#  1. torch: an existing torch >= 2.9 in the venv is kept; otherwise torch 2.14.1 + torchvision
#     0.29.1 (Composer imports torchvision, whose build must match torch's).
#  2. llamactl and its normal dependencies, resolved by pip as usual.
#  3. The frozen MosaicML packages (Composer, streaming, mcli) and the small packages they import,
#     from requirements/mosaicml-runtime.txt with --no-deps: their metadata pins torch<2.7.1 and
#     transformers<5, and letting pip resolve them would downgrade torch (3+ GB). The pinned set is
#     verified to work on torch 2.9-2.14 and transformers 5.x.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.llamactl-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt requirements/mosaicml-runtime.txt ] \
   && [ "$STAMP" -nt scripts/install.sh ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
have_torch=$("$PY" - <<'PYEOF'
try:
    import torch
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    print("yes" if (major, minor) >= (2, 9) else "old")
except Exception:
    print("no")
PYEOF
)
if [ "$have_torch" != "yes" ]; then
  echo "[llamactl] installing torch 2.14.1 + torchvision 0.29.1"
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
else
  if ! "$PY" -c "import torchvision" 2>/dev/null; then
    tv=$("$PY" -c "import torch; m=int(torch.__version__.split('.')[1]); print(f'0.{m+15}')")
    echo "[llamactl] keeping torch; installing torchvision $tv.*"
    "${PIP[@]}" "torchvision==$tv.*"
  fi
fi
echo "[llamactl] installing llamactl and its dependencies"
"${PIP[@]}" -e ".[test]"
echo "[llamactl] installing the frozen MosaicML packages without dependency resolution"
"${PIP[@]}" --no-deps -r requirements/mosaicml-runtime.txt
"$PY" -c "import composer, streaming, llamactl" >/dev/null
touch "$STAMP"
echo "[llamactl] ready: $VENV/bin/llamactl"
