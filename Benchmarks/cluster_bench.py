"""What the benchmarks that drive the local Slurm cluster share: where the binaries are, and running a
command that ends the benchmark with its output when it fails."""
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("SLURM_VM_BIN_DIR") or os.path.join(REPO, ".build", "release")
VM = os.path.join(BIN, "slurm-vm")
CLUSTER = os.path.join(REPO, "scripts", "cluster")


def sh(cmd, env, check=True, who="benchmark", **kw):
    r = subprocess.run(cmd, shell=isinstance(cmd, str), env=env, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        sys.exit(f"{who}: {cmd} failed:\n{r.stdout}{r.stderr}")
    return r
