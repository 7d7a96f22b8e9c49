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

# Each installed again whenever its list changes (installed.*: what the last complete
# install was of).
if [ ! -x "$dir/venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$dir/venv/installed.txt"; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$dir/venv/installed.txt"
fi
if ! cmp -s "$here/package.json" "$dir/node/installed.json"; then
  mkdir -p "$dir/node"
  cp "$here/package.json" "$dir/node/package.json"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund)
  cp "$here/package.json" "$dir/node/installed.json"
fi
echo "clients installed in $dir"
