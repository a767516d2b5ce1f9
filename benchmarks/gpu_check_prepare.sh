#!/usr/bin/env bash
# Before the GPU check's device call, here (a machine with pip): the wheels the lent GPU machine
# lacks into .whl/, the parity kit into .parity-kit/ (both git-ignored; the call carries them), then
# the size of everything the call sends, which must stay under the device tool's 64 MiB.
#
#   benchmarks/gpu_check_prepare.sh [KIT_DIR]      # KIT_DIR defaults to ../shared/parity
#
# The lent machine (docs/performance.md, "Running the GPU check") has Python 3.12 and a CUDA torch,
# transformers 5, accelerate, huggingface-hub >= 1.32, safetensors >= 0.8, Pillow, numpy, regex,
# requests, filelock, OpenCV and scikit-image, but no diffusers. diffusers' other requirement,
# importlib_metadata, is only imported on Python < 3.8, so diffusers alone travels (--no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
kit=${1:-../shared/parity}
DIFFUSERS=diffusers==0.42.1   # what this package is built and tested on (pyproject: >=0.42,<1)
LIMIT_MIB=64

if [ ! -f "$kit/cases.json" ] || [ ! -f "$kit/make_weights.py" ]; then
    echo "error: no parity kit at $kit (give its folder as the argument)" >&2
    exit 2
fi

rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$DIFFUSERS"

# the kit's tiny cases only: the full-size case (9 GB of weights) does not fit the check's minutes
rm -rf .parity-kit && mkdir -p .parity-kit/cases
cp "$kit"/{README.md,cases.json,compare.py,make_weights.py,make_inputs.py} .parity-kit/
cp -r "$kit"/inputs "$kit"/tiny .parity-kit/
for case in "$kit"/cases/tiny_*; do cp -r "$case" .parity-kit/cases/; done
chmod -R u+w .parity-kit   # the shared kit is read-only; a later run must be able to replace the copy

# what a device call sends: tracked and untracked-not-ignored files, plus the carried folders
mib() { awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1048576 }'; }
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb .whl | cut -f1)
copy=$(du -sb .parity-kit | cut -f1)
total=$((tree + wheels + copy))
echo "wheels: $(ls .whl | tr '\n' ' ')"
echo "a device call sends $(mib $total) MiB: working tree $(mib $tree) + .whl $(mib $wheels) + .parity-kit $(mib $copy) (limit $LIMIT_MIB MiB)"
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "error: that is over the device tool's $LIMIT_MIB MiB" >&2
    exit 1
fi
