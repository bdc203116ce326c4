#!/usr/bin/env bash
# Runs every test: unit, fuzz and end-to-end tests (swift test: real guests under QEMU, the image
# builder against Debian's archive), the differential tests against HTCondor's library, broadcasts on a
# namespace testbed (Tests/broadcast), VM jobs through a real local Slurm cluster (Tests/slurm), then the
# guest, broadcast and prolog benchmarks once, so their numbers appear in every CI log. CI runs exactly this: .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's start, with the time since the run began: CI has 90 minutes, and a log cut short still
# says where they went.
stage() { echo "=== $(date -u +%H:%M:%S) +$((SECONDS / 60))m$((SECONDS % 60))s: $*"; }
stage "system packages"
source scripts/deps.sh
stage "build"
swift build -c release --static-swift-stdlib --product slurm-vm 2>&1 | tail -1
swift build -c release --static-swift-stdlib --product slurm-vmd 2>&1 | tail -1
swift build -c release --product slurm-vm-vmm 2>&1 | tail -1
swift build --build-tests 2>&1 | tail -1
# Package.swift declares exactly what each target imports; the sources are formatted as
# .swift-format and .clang-format say (fix with scripts/format.sh).
python3 scripts/check_package_deps.py
swift format lint --strict -r Sources Tests Images/Builder Package.swift
git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror
log=$(mktemp)
rc=0
stage "unit, fuzz and guest tests (swift test)"
swift test --skip-build >"$log" 2>&1 || rc=$?
# Failures, skips (said loudly) and the summary; the whole log when something failed.
grep -E '^✘|SKIPPED|recorded an issue|^✔ Test run|Executed [0-9]+ tests' "$log" || true
if [ "$rc" -ne 0 ]; then tail -n 80 "$log"; exit "$rc"; fi
# The guest suite on the embedded VMM. These hosts' KVM is PVM, under which no stock Linux reaches
# user space, so it runs in the SVM sandbox (an L1 under TCG with emulated AMD SVM, scripts/sandbox.py),
# on images built here on the host; on a host with vmx/svm the swift test stage above ran it already.
if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  stage "SVM sandbox: images, then the embedded backend's guest tests and a Slurm job"
  sbx=$(mktemp -d)
  for i in minimal mpich; do
    SLURM_VM_CATALOG=$sbx/catalog .build/release/slurm-vm image build "Images/$i.toml" >"$log" 2>&1 || { cat "$log"; exit 1; }
  done
  # The cases parametrised by backend (Tests/GuestTests: arguments: Harness.backends).
  cases='commandsRunAndReturnTheirExitCodes|aSharedDirectoryIsReadAndWrittenFromTheGuest|guestsOnAPrivateNetworkReachEachOtherByName|tenMegabytesOfOutputArriveIntact|severalGuestsPrefixTheirOutput|eachVCPUThreadIsPinnedToItsOwnCPU|twoRunsOnDisjointCPUsAtOnce|ctrlCTearsEverythingDown|theEmbeddedVMMBootsTheMinimalImage|mpiexecRunsInsideOneGuest|anEndlessConsoleIsCutOffAtItsLimit'
  # Emulated SVM (QEMU 7.2's TCG) misbehaves now and then when two L2 guests boot at once: about 1 in
  # 25 such pairs, one guest dies before its first console byte, and L1 itself has vanished mid-run
  # (docs/vmm.md, "The SVM sandbox"). A stage that fails is therefore run once more, saying so and
  # showing the first failure; a second failure fails the run.
  sandbox_stage() {   # sandbox_stage TITLE SUMMARY-COMMAND -- SANDBOX-ARGS…
    local title=$1 summary=$2; shift 3
    local attempt rc
    for attempt in 1 2; do
      rc=0
      # A normal stage takes 2-4 minutes; an L1 that hangs (seen in the first minute of a stage) is
      # cut off after 10.
      python3 scripts/sandbox.py --out "$sbx/out" --timeout 600 "$@" >"$log" 2>&1 || rc=$?
      echo "$title:"
      eval "$summary" || true
      [ "$rc" -eq 0 ] && return 0
      tail -n 80 "$log"; tail -n 30 "$sbx/out/sandbox-console.log"
      [ "$attempt" = 1 ] && echo "*** $title failed (rc $rc): RETRIED once, as emulated SVM has a known flake (docs/vmm.md) ***"
    done
    exit "$rc"
  }
  # The test binary directly (swift test's build planning costs a minute under emulation), driving
  # the release CLI (a debug build's framing is too slow there for 10 MB of output).
  SLURM_VM_BIN=$PWD/.build/release/slurm-vm SLURM_VM_TEST_CATALOG=$sbx/catalog SLURM_VM_TEST_BACKENDS=embedded \
    sandbox_stage "SVM sandbox, embedded backend" "grep -E '^✘|SKIPPED|recorded an issue|^✔ Test run|Executed [0-9]+ tests' \"\$log\"" -- \
    --env SLURM_VM_BIN --env SLURM_VM_TEST_CATALOG --env SLURM_VM_TEST_BACKENDS -- \
    .build/debug/slurm-vmPackageTests.xctest --testing-library swift-testing --filter "$cases"
  # A VM job through a real local Slurm cluster inside L1 (slurm-vmd picks the embedded VMM there:
  # L1 has svm), its working directory shared over the VMM's virtio-fs, its network on its virtio-net.
  SLURM_VM_BIN_DIR=$PWD/.build/release SLURM_VM_TEST_CATALOG=$sbx/catalog \
    sandbox_stage "SVM sandbox, a Slurm job on the embedded VMM" "tail -n 1 \"\$log\"" -- \
    --mem 4G --env SLURM_VM_BIN_DIR --env SLURM_VM_TEST_CATALOG -- \
    python3 -m pytest -q -rs -p no:cacheprovider Tests/slurm/test_embedded.py
  rm -rf "$sbx"
fi
# The embedded-VMM Slurm test ran in the sandbox above where the host has no vmx/svm.
grep -qwE 'vmx|svm' /proc/cpuinfo || skip_embedded=--ignore=Tests/slurm/test_embedded.py
stage "differential tests against HTCondor"
# Every function HTCondor registers, thousands of random calls each (test_functions.py); those that do
# not agree yet are listed with what differs (-rx).
SLURM_VM_BIN=$PWD/.build/release/slurm-vm python3 -m pytest -q -rx Tests/differential
# Broadcasts on a testbed of network namespaces: completion, a killed node, corruption, a full disk.
stage "broadcast tests on the namespace testbed"
SLURM_VM_BIN=$PWD/.build/release/slurm-vm python3 -m pytest -q -rs Tests/broadcast
# VM jobs through a real local Slurm cluster (scripts/cluster), with the release binaries; the 3-node
# job whose image arrives by one broadcast.
stage "Slurm tests"
SLURM_VM_BIN_DIR=$PWD/.build/release python3 -m pytest -q -rs ${skip_embedded:-} Tests/slurm
# The guest benchmark (3 runs each) on a scratch catalog: build time, vm run vs bare QEMU, VMM memory.
stage "guest benchmark"
bench=$(mktemp -d)
trap 'rm -rf "$bench"' EXIT
SLURM_VM_CATALOG=$bench/catalog SLURM_VM_RUNDIR=$bench/run .build/release/slurm-vm image build Images/minimal.toml >/dev/null 2>&1
SLURM_VM_CATALOG=$bench/catalog SLURM_VM_RUNDIR=$bench/run .build/release/slurm-vm bench guest --runs 3
stage "matchmaking benchmark"
# 10,000 jobs x 1,000 images, from all alike to every job with constants of its own (issue 22), and
# HTCondor's own library on the same ads (every job different) as the baseline; every run cross-checks
# the batch and one-job results against the exact evaluator on sampled jobs (exit 1 on a mismatch).
# Issue 22's targets are checked at the every-job-different end (the stage fails if one is missed):
# batch >= 10 M and one job at a time >= 1 M pairs/s/core; one submission through a catalog of 10,000
# images within 5 ms at the 95th percentile.
for share in 0 0.5 1; do
  echo "--distinct $share"
  targets=()
  if [ "$share" = 1 ]; then targets=(--require-batch 10 --require-one-job 1); fi
  .build/release/slurm-vm bench match --generate 10000 1000 --distinct "$share" --sample 200 --latency 20 "${targets[@]}"
done
.build/release/slurm-vm bench match --generate 1000 10000 --distinct 1 --sample 20 --latency 50 | grep -E "workload|one submission"
# sbatch's own path: a scratch catalog of 10,000 images, then Catalog.match per submission.
.build/release/slurm-vm bench match --generate 10 10 --distinct 1 --catalog-images 10000 --latency 50 --require-latency-ms 5 |
  grep -E "^catalog|through the catalog|target"
.build/release/slurm-vm bench match --generate 10000 1000 --distinct 1 --sample 1 --dump "$bench/match" >/dev/null
CONDOR_CONFIG=ONLY_ENV python3 Benchmarks/htcondor_match_rate.py "$bench/match" --jobs 100
stage "broadcast benchmark"
# Image distribution at the target point (16 nodes, 256 MiB, 200 Mbit/s): the benchmark's own pipelined
# chain (the baseline) and slurm-vm's default schedule (auto: the relay there) side by side, and one
# node at a quarter of the rate, on every kind of port queue with cubic and BBR; one run each (the
# medians of 3, the other schedules and the central server are in docs/broadcast.md).
SLURM_VM_BIN=$PWD/.build/release/slurm-vm python3 Benchmarks/broadcast.py --nodes 16 --sizes 256 --slow \
  --kinds chain,auto --queues prio,bfifo,tbf --congestion cubic,bbr --json-out "$bench/broadcast-16.json"
# The simulator against the testbed (docs/broadcast.md, "The curve to 1,024 nodes"): the two trees (the
# default's choice for more nodes) at 4 and 8 nodes too, then the error of each cell, then the simulated
# curve with a slow and a failing node.
SLURM_VM_BIN=$PWD/.build/release/slurm-vm python3 Benchmarks/broadcast.py --nodes 4,8 --sizes 256 \
  --kinds twotree --queues prio,bfifo,tbf --json-out "$bench/broadcast-4-8.json"
.build/release/slurm-vm bench broadcast-sim --calibrate "$bench/broadcast-4-8.json,$bench/broadcast-16.json"
.build/release/slurm-vm bench broadcast-sim --nodes 16,64,256 --schedules auto --faults none,both
# Prolog latency of VM jobs through the local cluster, against booting the same guests by hand.
stage "prolog latency benchmark"
SLURM_VM_CATALOG=$bench/catalog SLURM_VM_BIN_DIR=$PWD/.build/release python3 Benchmarks/prolog_latency.py --runs 5
# Linux on the embedded VMM against QEMU with KVM in one machine with hardware virtualization (the SVM
# sandbox here): boot to agent ready, 1 and 4 guests, and RSS beyond guest RAM.
# Its 4 concurrent boots meet the emulated-SVM flake too (with QEMU-KVM in L1 as well as with our
# VMM; docs/vmm.md): the benchmark runs a boot that fails up to twice more, and when L1 itself is lost
# it goes on in a fresh L1 from the measurements kept, three L1s at most. If the third is lost too
# (status 75), the numbers are said NOT MEASURED in this run and CI goes on: the embedded VMM's
# correctness is gated by the sandbox stages above; any other failure fails the run.
stage "boot benchmark in the SVM sandbox"
rc=0; SLURM_VM_BIN=$PWD/.build/release/slurm-vm python3 Benchmarks/sandbox_boot.py --runs 3 --catalog "$bench/catalog" || rc=$?
if [ "$rc" = 75 ]; then
  echo "*** Benchmarks/sandbox_boot.py: L1 was lost three times (the emulated-SVM flake, docs/vmm.md); its numbers are NOT MEASURED in this run ***"
elif [ "$rc" != 0 ]; then
  exit "$rc"
fi
# MPI over the job network against the same program between the hosts: latency, bandwidth, allreduce.
stage "MPI network benchmark"
SLURM_VM_CATALOG=$bench/catalog SLURM_VM_BIN_DIR=$PWD/.build/release python3 Benchmarks/mpi_network.py --runs 2
# The embedded VMM against QEMU -M microvm on the same tiny guest: start to exit, memory beyond guest
# RAM, prefault per GiB.
stage "VMM benchmark"
python3 Benchmarks/vmm.py --runs 10
stage "done"
