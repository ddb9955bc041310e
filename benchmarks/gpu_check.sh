#!/usr/bin/env bash
# The GPU check, a few minutes on a machine with an NVIDIA GPU and a CUDA build of torch
# installed as docs/install.md says (nothing else is installed here): the CUDA tests, then the
# benchmark on the GPU. Its table goes to stdout, its JSON to $OUT/bench_cuda.json (or ./).
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device: install a CUDA build (docs/install.md)"
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__,
      "| CUDA", torch.version.cuda)
PY
python -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
out="${OUT:-.}"
noisynets bench --device cuda --json | tee "$out/bench_cuda.log" | tail -n 1 > "$out/bench_cuda.json"
grep -v '^{' "$out/bench_cuda.log"
