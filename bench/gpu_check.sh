#!/usr/bin/env bash
# The GPU check in one run (bench/gpu_check.py says what each part checks); under 8 minutes on a
# CUDA machine. Run it from the repository root, in the project's environment:
#
#   bash bench/gpu_check.sh                 # on a CUDA machine; COMFYUI=DIR (a ComfyUI folder, and
#                                           # COMFYUI_PYTHON its interpreter) adds the ComfyUI part
#   bash bench/gpu_check.sh --cpu-smoke     # the same code on the CPU, tiny sizes: a test of this script
#
# Prints each part's table; exits non-zero if any part failed (the others still run).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ "${1:-}" = "--cpu-smoke" ]; then
  DEVICE=(--device cpu); SPEED=(--size tiny --steps 3 --precisions fp32)
else
  DEVICE=(--device cuda); SPEED=(--size full --steps 50)
fi
status=0
"$PYTHON" bench/gpu_check.py parity "${DEVICE[@]}" || status=1
"$PYTHON" bench/gpu_check.py speed "${DEVICE[@]}" "${SPEED[@]}" || status=1
if [ -n "${COMFYUI:-}" ]; then
  "$PYTHON" bench/gpu_check.py comfyui "${DEVICE[@]}" --comfyui "$COMFYUI" --python "${COMFYUI_PYTHON:-$PYTHON}" || status=1
else
  echo "comfyui: skipped; set COMFYUI to a ComfyUI folder (and COMFYUI_PYTHON to its interpreter) to run the workflow there"
fi
exit $status
