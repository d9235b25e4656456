#!/usr/bin/env bash
# Sets everything up and starts the gateway (default 127.0.0.1:8000, bundled models).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/lethe serve --host "${LETHE_HOST:-127.0.0.1}" --port "${LETHE_PORT:-8000}" "$@"
