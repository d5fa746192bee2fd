#!/usr/bin/env bash
# The demo's wall time from a fresh clone: clones REPO (default: this repository) into DEST (default a new
# temporary folder), then times the README's main command in two parts, the install and the training:
#
#     bash benchmarks/fresh_clone_demo.sh [REPO] [DEST]
#
# Run it on a quiet machine: the number is meant to be compared with the README's. The clone's own
# data_cache/ starts empty, so the dataset and the teacher's motion encoder are made as on a first run.
set -euo pipefail
repo=${1:-$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)}
dest=${2:-$(mktemp -d)/jax_instant4d}
if [ -e "$dest" ]; then
  echo "fresh_clone_demo.sh: $dest exists; give a new folder" >&2
  exit 2
fi
git clone -q "$repo" "$dest"
cd "$dest"
s=$(date +%s)
python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . > install.out 2>&1
i=$(date +%s)
instant4d train --config configs/small.py > train.out 2>&1
e=$(date +%s)
echo "clone $dest ($(git rev-parse --short HEAD))"
echo "pip install -e . $((i - s)) s; instant4d train --config configs/small.py $((e - i)) s; total $((e - s)) s"
echo "the run's log: $dest/train.out (its held-out table at the end)"
