#!/usr/bin/env bash
# The main job, for now: build slurm-vm and match sample jobs against a sample image catalog.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
swift build -c release --product slurm-vm 2>&1 | tail -1
bin=.build/release/slurm-vm
echo; echo "== A job that wants MPI on Debian 12 (examples/job.ad) against examples/images.ads"
$bin classad match examples/job.ad examples/images.ads --explain
echo; echo "== A job no image can satisfy"
$bin classad match examples/job-unsatisfiable.ad examples/images.ads || true
echo; echo "== Matchmaking throughput (10,000 jobs x 1,000 images, synthetic)"
$bin bench match --generate 10000 1000 --seed 1
