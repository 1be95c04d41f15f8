#!/usr/bin/env bash
# Baton's run command: sets up .venv, then runs the whole system on embedded defaults (SQLite and a
# private Redis server) and drives real workflows through it: `baton demo`. Arguments pass through
# (`bash scripts/demo.sh --orders 200`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
BASE_PY=$(command -v python3.11 || command -v python3) || { echo "python3 is required" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $("$BASE_PY" --version)"
    "$BASE_PY" -m venv "$VENV"
fi
STAMP=$VENV/.baton-run-stamp
WANT=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "==> installing baton into $VENV"
    LOG=$(mktemp)
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . >"$LOG" 2>&1; then
        cat "$LOG" >&2; rm -f "$LOG"; exit 1
    fi
    rm -f "$LOG"
    echo "$WANT" >"$STAMP"
fi
exec "$VENV/bin/baton" demo "$@"
