#!/usr/bin/env bash
# The main job: install what is needed, build slurm-vm, slurm-vmd, the SPANK plugin and the minimal
# and MPICH guest images from Debian's packages, bring up a real 2-node Slurm cluster on this machine,
# and submit a VM job whose srun steps run in 4 pinned guests (2 per node) on one private network, an
# MPI program among them (srun --mpi=pmi2); then tear everything down. The last part shows the runner
# by hand: the same guests booted without Slurm.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
swift build -c release --static-swift-stdlib --product slurm-vm 2>&1 | tail -1
swift build -c release --static-swift-stdlib --product slurm-vmd 2>&1 | tail -1
bin=$PWD/.build/release/slurm-vm
# A catalog and run directory of the demo's own, so nothing of the host's is touched.
export SLURM_VM_CATALOG=${SLURM_VM_CATALOG:-$PWD/out/demo/catalog} SLURM_VM_RUNDIR=${SLURM_VM_RUNDIR:-$PWD/out/demo/run}
mkdir -p "$SLURM_VM_CATALOG" "$SLURM_VM_RUNDIR"
ncpu=$(nproc)

echo; echo "== Build the minimal image (busybox + agent on Debian's cloud kernel) and list the catalog"
$bin image build Images/minimal.toml
echo; echo "== Build the MPI image (MPICH 4 from Debian, same kernel) and an MPI program for it"
$bin image build Images/mpich.toml
$bin image list

echo; echo "== What a job asking for busybox on Debian 12 with 2 vCPUs would get (dry run of sbatch --vm-*)"
$bin match --vm-libs busybox-static --vm-os debian:12 --vm-vcpus 2

echo; echo "== A 2-node Slurm cluster on this machine (munge, slurmctld, 2 slurmd, slurm-vmd, the plugin), each node in a network namespace of its own"
export SLURM_VM_CLUSTER_DIR=$PWD/out/demo/cluster
scripts/cluster down >/dev/null 2>&1 || true
eval "$(scripts/cluster up --nodes 2 --netns --catalog "$SLURM_VM_CATALOG")"
trap 'scripts/cluster down' EXIT
sinfo
work=$PWD/out/demo/job; mkdir -p "$work"
mpicc -O2 -o "$work/mpi_check" Benchmarks/mpi/mpi_check.c
cd "$work"
cat > vmjob.sh <<'JOB'
#!/bin/sh
#SBATCH -N2 --ntasks-per-node=2 --vm-count=4 --vm-vcpus=1 --vm-libs=mpich -o vmjob.out
echo "batch script on the host: $(hostname)"
srun -l sh -c 'echo "in guest $(hostname): kernel $(uname -r), $(nproc) vCPU, cwd $(pwd)"'
srun -n4 sh -c 'echo "task $SLURM_PROCID was here" > task-$SLURM_PROCID.txt'
cat task-*.txt
# The job's private network: every guest reaches every other by name (SLURM_VM_HOSTS lists them).
srun -n4 sh -c 'for h in $(echo $SLURM_VM_HOSTS | tr , " "); do ping -c1 -W5 $h >/dev/null && r="$r $h"; done; echo "$(hostname) reaches$r"'
# MPI across the 4 guests: the ranks wire up through Slurm's PMI and talk over the job network.
# (Bounded: MPICH 4.0.2's UCX layer can hang in MPI_Finalize after the ranks are done; docs/network.md.)
timeout 60 srun --mpi=pmi2 -n4 ./mpi_check || { [ $? = 124 ] && echo "(MPI_Finalize hung after the ranks were done: the MPICH/UCX issue in docs/network.md; step ended)"; }
JOB
echo; echo "== sbatch a VM job: 4 guests, 2 per node, each vCPU on its own core, on one private network (VXLAN between the nodes); its srun steps run inside"
cat vmjob.sh
sbatch -W vmjob.sh
cat vmjob.out
[ "$(grep -c 'alltoall ok, allreduce 6 (correct)' vmjob.out)" = 4 ] || { echo "demo: the MPI step did not give 4 correct ranks" >&2; exit 1; }
echo; echo "== A request no image can meet is refused at submission, nothing queued"
sbatch --vm-libs=openmpi --wrap true || true
squeue
cd - >/dev/null
scripts/cluster down; trap - EXIT

echo; echo "== By hand, without Slurm: one guest, a command inside, its exit code comes back"
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
