#!/usr/bin/env sh
# Idempotent set-up: creates ./.venv with the pinned development install.
# Re-running it is a no-op unless pyproject.toml or requirements-dev.txt changed.
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv/.stsearch-installed
want=$(cat pyproject.toml requirements-dev.txt | cksum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
echo "$want" > "$stamp"
