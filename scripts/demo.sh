#!/usr/bin/env bash
# The main job: install what is needed, build slurm-vm and the minimal guest image from Debian's
# packages, then boot pinned guests and run commands in them. (The Slurm integration comes next:
# see issues; until then this is the same path a job's prolog will take, driven by hand.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
swift build -c release --product slurm-vm 2>&1 | tail -1
bin=$PWD/.build/release/slurm-vm
# A catalog and run directory of the demo's own, so nothing of the host's is touched.
export SLURM_VM_CATALOG=${SLURM_VM_CATALOG:-$PWD/out/demo/catalog} SLURM_VM_RUNDIR=${SLURM_VM_RUNDIR:-$PWD/out/demo/run}
mkdir -p "$SLURM_VM_CATALOG" "$SLURM_VM_RUNDIR"
ncpu=$(nproc)

echo; echo "== Build the minimal image (busybox + agent on Debian's cloud kernel) and list the catalog"
$bin image build Images/minimal.toml
$bin image list

echo; echo "== What a job asking for busybox on Debian 12 with 2 vCPUs would get (dry run of sbatch --vm-*)"
$bin match --vm-libs busybox-static --vm-os debian:12 --vm-vcpus 2

echo; echo "== One guest: a command inside, its exit code comes back"
$bin vm run --image minimal --verbose -- sh -c 'echo "hello from $(hostname), kernel $(uname -r), $(nproc) CPU"; exit 3' || echo "(exit code $?)"

if [ "$ncpu" -ge 2 ]; then
  echo; echo "== Two space-shared guests, one dedicated CPU each, output prefixed by guest"
  $bin vm run --image minimal --count 2 --cpus 0,1 -- sh -c 'echo "$(hostname): $(nproc) vCPU, $(free -m | awk "/Mem/{print \$2}") MiB"'
fi

echo; echo "== A kept guest: pinning as the host sees it, a second command, stop"
id=$($bin vm run --image minimal --keep)
$bin vm ls
pid=$($bin vm ls --json | python3 -c 'import json,sys; g=[x for x in json.load(sys.stdin) if x["id"]=="'"$id"'"][0]; print(g["pid"], *g["vcpu_threads"])')
set -- $pid
for t in "${@:2}"; do echo "vCPU thread $t: $(grep Cpus_allowed_list /proc/$1/task/$t/status)"; done
$bin vm exec "$id" -- cat /proc/uptime
$bin vm stop "$id"
