#!/usr/bin/env bash
# Installs the client libraries the tests drive — the official openai SDKs for Python
# and Node, and playwright-core (no browser download; the tests use Debian's chromium) —
# into DIR (default target/tmp/clients), once. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/../../target/tmp/clients}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
if [ ! -d "$dir/node/node_modules/openai" ] || [ ! -d "$dir/node/node_modules/playwright-core" ]; then
  mkdir -p "$dir/node"
  cp "$here/package.json" "$dir/node/package.json"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund)
fi
echo "clients installed in $dir"
