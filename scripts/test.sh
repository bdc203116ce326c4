#!/usr/bin/env bash
# Runs every test: unit and fuzz tests (swift test) and the differential tests against HTCondor's library.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
swift build -c release --product slurm-vm 2>&1 | tail -1
swift test 2>&1 | tail -n 40
SLURM_VM_BIN=$PWD/.build/release/slurm-vm python3 -m pytest -q Tests/differential
