#!/usr/bin/env bash
# Installs the client libraries the tests drive — the official openai SDKs for Python
# and Node, playwright-core (no browser download; the tests use Debian's chromium), the
# AI SDK (`ai`, `@ai-sdk/react` with react) and esbuild for its test page — into DIR
# (default target/tmp/clients), once. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/../../target/tmp/clients}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
# Installed again whenever package.json changes (installed.json: what the last complete
# install was of).
if ! cmp -s "$here/package.json" "$dir/node/installed.json"; then
  mkdir -p "$dir/node"
  cp "$here/package.json" "$dir/node/package.json"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund)
  cp "$here/package.json" "$dir/node/installed.json"
fi
echo "clients installed in $dir"
