#!/usr/bin/env python3
"""A machine with hardware virtualization, for hosts that have none.

QEMU's TCG with `-cpu max` emulates AMD SVM with nested paging, and Debian's cloud kernel there loads
`kvm_amd` and gives a working /dev/kvm (docs/vmm.md, "The SVM sandbox"). This boots such a machine
(L1) and runs one command in it:

    scripts/sandbox.py [--mem 3G] [--cpus 2] [--out DIR] -- COMMAND [ARG...]

- L1's root is this host's own root, shared read-only over virtio-fs (QEMU's virtiofsd) under a
  tmpfs overlay: every binary, library, image catalog and build tree of the host is there at the same
  path (/tmp too), and whatever L1 writes stays in L1's memory. /run is fresh.
- `--out DIR` (default: a new temporary directory) is shared read-write at the same path: results
  that must come back go there. The command runs in the current directory, with this environment's
  PATH and the variables named by --env.
- L1 runs Debian's cloud kernel (the images' kernel: linux-image-cloud-amd64, fetched with apt-get
  download into ~/.cache/slurm-vm/sandbox and unpacked there, modules indexed with depmod), so
  `modprobe` works in L1 for every module of that kernel. kvm_amd is loaded before the command runs.
- The command's output streams to this process's stdout (a virtio console); L1's kernel log is
  kept in OUT/sandbox-console.log. The exit status is the command's; 125 when L1 itself failed.

As a library: `run(argv, ...)` returns (status, output) and `available()` says whether this host can
boot the sandbox at all (root, QEMU, virtiofsd, apt).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

QEMU = "/usr/bin/qemu-system-x86_64"
BOOT_LIMIT = 120
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "slurm-vm", "sandbox")
# Modules the initramfs loads to reach its root (in dependency order after resolution); the rest come
# from the shared tree by modprobe.
BOOT_MODULES = ["virtio_mmio", "virtio_console", "virtiofs", "overlay"]
L1_MODULES = ["kvm_amd", "tun", "vhost_net", "bridge", "veth", "vxlan", "nf_tables"]


def say(msg):
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def available():
    """None if the sandbox can boot here, else why not."""
    if os.geteuid() != 0:
        return "the sandbox shares the host's root with virtiofsd, which needs root"
    for p in (QEMU, VIRTIOFSD):
        if not os.access(p, os.X_OK):
            return f"{p} is missing (apt-get install qemu-system-x86)"
    if not shutil.which("apt-get") or not shutil.which("depmod"):
        return "apt-get and depmod fetch and index Debian's cloud kernel"
    return None


BUILDER_DEBS = "/var/cache/slurm-vm/debs"


def fetch_deb(pkg, dest):
    """Puts Debian's package `pkg` in dest: from the image builder's cache when an image was built here
    (the same kernel and busybox), else with apt-get download."""
    cached = [f for f in os.listdir(BUILDER_DEBS) if f.startswith(pkg + "_")] if os.path.isdir(BUILDER_DEBS) else []
    if cached:
        shutil.copy(os.path.join(BUILDER_DEBS, cached[0]), dest)
    else:
        say(f"fetching {pkg}")
        subprocess.run(["apt-get", "download", pkg], cwd=dest, check=True, stdout=subprocess.DEVNULL)


def kernel_tree():
    """Debian's cloud kernel unpacked in the cache: (vmlinuz, modules dir, release)."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True).stdout
    pkgs = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.strip().startswith("Depends:") and "linux-image-" in l]
    if not pkgs:
        raise SystemExit("sandbox: apt knows no linux-image-cloud-amd64 (run apt-get update)")
    pkg = pkgs[0]
    release = pkg[len("linux-image-"):]
    root = os.path.join(CACHE, release)
    vmlinuz = os.path.join(root, "boot", f"vmlinuz-{release}")
    moddir = os.path.join(root, "lib", "modules", release)
    if not os.path.exists(os.path.join(moddir, "modules.dep")):
        os.makedirs(CACHE, exist_ok=True)
        debs = tempfile.mkdtemp(dir=CACHE)
        try:
            fetch_deb(pkg, debs)
            staging = root + ".new"
            shutil.rmtree(staging, ignore_errors=True)
            for f in os.listdir(debs):
                subprocess.run(["dpkg-deb", "-x", os.path.join(debs, f), staging], check=True)
            subprocess.run(["depmod", "-b", staging, release], check=True)
            shutil.rmtree(root, ignore_errors=True)
            os.rename(staging, root)
        finally:
            shutil.rmtree(debs, ignore_errors=True)
    return vmlinuz, moddir, release


def busybox():
    """A static busybox for the initramfs: the host's, or Debian's busybox-static from the cache."""
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p) and "statically" in subprocess.run(["file", "-L", p], capture_output=True, text=True).stdout:
            return p
    path = os.path.join(CACHE, "busybox")
    if not os.path.exists(path):
        d = tempfile.mkdtemp(dir=CACHE)
        try:
            fetch_deb("busybox-static", d)
            deb = [f for f in os.listdir(d) if f.endswith(".deb")][0]
            subprocess.run(["dpkg-deb", "-x", os.path.join(d, deb), os.path.join(d, "x")], check=True)
            shutil.copy(os.path.join(d, "x", "bin", "busybox"), path + ".new")
            os.rename(path + ".new", path)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return path


def module_order(moddir, names):
    """The .ko paths (relative to moddir) for `names` and their dependencies, dependencies first."""
    deps = {}
    for line in open(os.path.join(moddir, "modules.dep")):
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {os.path.basename(m).split(".ko")[0].replace("-", "_"): m for m in deps}
    order = []

    def visit(m):
        if m in order:
            return
        for d in deps[m]:
            visit(d)
        order.append(m)

    for n in names:
        if n in by_name:  # built in otherwise
            visit(by_name[n])
    return order


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "sandbox-init: L1 is up" >/dev/ttyS0
arg() { for w in $(cat /proc/cmdline); do case "$w" in "sandbox.$1="*) echo "${w#*=}";; esac; done; }
fail() { echo "sandbox-init: $*" >/dev/hvc0; echo 125 > /rc; poweroff -f; }
for m in $(cat /modules); do insmod "/$m" || fail "insmod $m"; done
mkdir -p /host /up /new
mount -t virtiofs hostroot /host -o ro || fail "cannot mount the host's root"
mount -t tmpfs -o mode=755 upper /up; mkdir -p /up/u /up/w
mount -t overlay root -o lowerdir=/host,upperdir=/up/u,workdir=/up/w /new || fail "overlay"
mount -t proc proc /new/proc; mount -t sysfs sys /new/sys; mount -t devtmpfs dev /new/dev
mkdir -p /new/dev/pts /new/dev/shm; mount -t devpts devpts /new/dev/pts; mount -t tmpfs shm /new/dev/shm
ln -sf /proc/self/fd /new/dev/fd; ln -sf /proc/self/fd/0 /new/dev/stdin; ln -sf /proc/self/fd/1 /new/dev/stdout; ln -sf /proc/self/fd/2 /new/dev/stderr
mount -t tmpfs -o mode=755 run /new/run
out=$(arg out)
mkdir -p "/new$out"; mount -t virtiofs out "/new$out" || fail "cannot mount $out"
# The host's cgroup layout (v1 controllers, a named systemd hierarchy, cgroup2 beside them), which
# Debian's Slurm 22.05 (proctrack/cgroup, task/cgroup) expects.
mount -t tmpfs -o mode=755 cgroup /new/sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir -p /new/sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /new/sys/fs/cgroup/$c 2>/dev/null
done
mkdir -p /new/sys/fs/cgroup/systemd /new/sys/fs/cgroup/unified
mount -t cgroup -o none,name=systemd cgroup /new/sys/fs/cgroup/systemd 2>/dev/null
mount -t cgroup2 cgroup2 /new/sys/fs/cgroup/unified 2>/dev/null
rel=$(uname -r); mods=$(arg modules)
mkdir -p "/new/lib/modules/$rel"; mount --bind "/new$mods" "/new/lib/modules/$rel"
hostname sandbox; ip link set lo up 2>/dev/null
# L1 has no network but lo; its name resolves there (slurmctld and munged look it up).
echo "127.0.1.1 sandbox" >> /new/etc/hosts
# Modules the kernel asks for itself (nf_tables for nft, say) load from the shared tree too: its
# helper runs in this initramfs, not in the chroot.
printf '#!/bin/sh\nexec chroot /new /sbin/modprobe "$@"\n' > /modprobe; chmod 755 /modprobe; echo /modprobe > /proc/sys/kernel/modprobe
chroot /new /sbin/modprobe -a kvm_amd >/dev/hvc0 2>&1 || fail "no kvm_amd (does this QEMU emulate SVM?)"
# tun: /dev/net/tun appears only once it is loaded, and nothing asks the kernel for it by name.
chroot /new /sbin/modprobe -a tun >/dev/hvc0 2>&1
# One address that is not loopback, on a dummy device (192.0.2.1, a documentation address that goes
# nowhere): getaddrinfo's AI_ADDRCONFIG, which slurmctld and slurmd bind with, finds nothing without.
chroot /new /sbin/modprobe -a dummy >/dev/hvc0 2>&1; ip link add dummy0 type dummy && ip addr add 192.0.2.1/32 dev dummy0 && ip link set dummy0 up
# The command runs with /new as the real root (switch_root), not in a chroot: the kernel refuses a
# user namespace to a chrooted process, and file servers run in one (docs/security.md). Stage 2 is
# PID 1 there; busybox comes along for its last words, since the initramfs is gone by then.
mkdir -p /new/run/sandbox; cp /bin/busybox /new/run/sandbox/busybox
cat > /new/run/sandbox-stage2 <<EOF2
B=/run/sandbox/busybox
echo /sbin/modprobe > /proc/sys/kernel/modprobe
# What udev does on a Debian host: /dev/kvm for the kvm group (QEMU's own uid gets that group).
getent group kvm >/dev/null || groupadd --system kvm
chgrp kvm /dev/kvm && chmod 660 /dev/kvm
# Through a pipe, not the console's tty: programs see what they see on a host under a pipe (no
# colours, no terminal). The command's script writes its own status.
/bin/sh "$out/.sandbox-command" </dev/null 2>&1 | \$B cat >/dev/hvc0
\$B sync
# The status also goes to the serial console, with the kernel's last words when the script wrote
# none (a killed shell, a full tmpfs): the host then knows why.
if [ -s "$out/.sandbox-rc" ]; then
  echo "sandbox-init: status \$(\$B cat "$out/.sandbox-rc")" >/dev/ttyS0
else
  echo "sandbox-init: the command wrote no status; free memory and the kernel's last messages:" >/dev/ttyS0
  \$B free >/dev/ttyS0 2>&1; \$B df /tmp >/dev/ttyS0 2>&1; \$B dmesg | \$B tail -n 40 >/dev/ttyS0
fi
\$B sync; \$B poweroff -f
EOF2
exec switch_root /new /run/sandbox/busybox sh /run/sandbox-stage2
"""


def initramfs(moddir, workdir):
    """A small uncompressed initramfs: busybox, the init script, the boot modules."""
    tree = os.path.join(workdir, "initramfs")
    os.makedirs(os.path.join(tree, "bin"))
    for d in ("proc", "sys", "dev"):
        os.makedirs(os.path.join(tree, d))
    shutil.copy(busybox(), os.path.join(tree, "bin", "busybox"))
    with open(os.path.join(tree, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(tree, "init"), 0o755)
    mods = module_order(moddir, BOOT_MODULES)
    for m in mods:
        os.makedirs(os.path.dirname(os.path.join(tree, m)), exist_ok=True)
        shutil.copy(os.path.join(moddir, m), os.path.join(tree, m))
    with open(os.path.join(tree, "modules"), "w") as f:
        f.write("\n".join(mods) + "\n")
    image = os.path.join(workdir, "initramfs.cpio")
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, text=True, check=True).stdout
    with open(image, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files.encode(), stdout=f, check=True)
    return image


def tsc_khz():
    """The host's TSC rate, which TCG passes through: L1's kernel is told it, since calibrating against
    the emulated PIT under load can hang (as the QEMU backend found for its guests). 0 if unknown."""
    path = os.path.join(CACHE, "tsc-khz")
    boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
    try:
        cached_id, khz = open(path).read().split()
        if cached_id == boot_id:
            return int(khz)
    except (OSError, ValueError):
        pass
    src = os.path.join(CACHE, "tsc.c")
    exe = os.path.join(CACHE, "tsc")
    with open(src, "w") as f:
        f.write("#include <stdio.h>\n#include <time.h>\n#include <x86intrin.h>\n"
                "int main(void){struct timespec a,b,d={0,50000000};clock_gettime(CLOCK_MONOTONIC_RAW,&a);"
                "unsigned long long c0=__rdtsc();nanosleep(&d,0);clock_gettime(CLOCK_MONOTONIC_RAW,&b);unsigned long long c1=__rdtsc();"
                "double ns=(b.tv_sec-a.tv_sec)*1e9+(b.tv_nsec-a.tv_nsec);printf(\"%llu\\n\",(unsigned long long)((c1-c0)*1e6/ns));return 0;}\n")
    try:
        subprocess.run(["gcc", "-O2", "-o", exe, src], check=True, capture_output=True)
        khz = int(subprocess.run([exe], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0
    with open(path + ".new", "w") as f:
        f.write(f"{boot_id} {khz}\n")
    os.rename(path + ".new", path)
    return khz


def start_virtiofsd(source, sock, log, cache):
    # sandbox=chroot: the namespace sandbox pivots into the shared directory, which fails for "/"
    # (EBUSY) where the root is not a mount point of its own, as in containers.
    p = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={source}", "-o", f"cache={cache}", "-o", "no_posix_lock",
                          "-o", "sandbox=chroot"], stdout=log, stderr=log)
    for _ in range(100):
        if os.path.exists(sock):
            return p
        time.sleep(0.05)
    p.kill()
    raise SystemExit(f"sandbox: virtiofsd for {source} did not start")


def run(argv, mem_mb=3072, cpus=2, out=None, env_names=(), stream=sys.stdout, timeout=3600):
    """Runs argv in a fresh L1; returns (exit status, output)."""
    why = available()
    if why:
        raise SystemExit(f"sandbox: cannot run here: {why}")
    vmlinuz, moddir, _ = kernel_tree()
    out = os.path.abspath(out or tempfile.mkdtemp(prefix="slurm-vm-sandbox-"))
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sandbox-run-")
    procs = []
    try:
        rd = initramfs(moddir, work)
        # TERM goes unless asked for: the kernel gives init TERM=linux, and programs would colour
        # their output for a terminal that is not there.
        env = "unset TERM\n" + "".join(f"export {n}={sh_quote(os.environ[n])}\n" for n in ("PATH",) + tuple(env_names) if n in os.environ)
        with open(os.path.join(out, ".sandbox-command"), "w") as f:
            f.write(env + f"cd {sh_quote(os.getcwd())} || exit 125\n" + " ".join(sh_quote(a) for a in argv)
                    + f"\necho $? > {sh_quote(os.path.join(out, '.sandbox-rc'))}\n")
        rc_path = os.path.join(out, ".sandbox-rc")
        if os.path.exists(rc_path):
            os.unlink(rc_path)
        log = open(os.path.join(out, "sandbox-virtiofsd.log"), "w")
        output = os.path.join(work, "output")
        open(output, "w").close()
        khz = tsc_khz()
        timing = f"tsc_early_khz={khz} lpj={khz * 1000 // 250} " if khz else ""
        append = (f"console=ttyS0 panic=-1 quiet tsc=reliable no_timer_check {timing}sandbox.out={out} sandbox.modules={moddir} "
                  "rdinit=/init")
        qemu = [QEMU, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-M", "microvm,rtc=on,memory-backend=ram", "-accel", "tcg,thread=multi",
                # max: SVM with nested paging; without XSAVE, which QEMU's SVM does not virtualize
                # for the L2 (docs/vmm.md).
                "-cpu", "max,-xsave", "-smp", str(cpus), "-m", f"{mem_mb}M",
                # L1's resets (a triple fault ends QEMU silently under -no-reboot) and what QEMU's
                # emulation refused, in OUT/sandbox-qemu.log: the first thing to read when L1 vanishes.
                "-d", "guest_errors,cpu_reset", "-D", os.path.join(out, "sandbox-qemu.log"),
                "-object", f"memory-backend-memfd,id=ram,size={mem_mb}M,share=on",
                "-kernel", vmlinuz, "-initrd", rd, "-append", append,
                "-chardev", f"file,id=con,path={os.path.join(out, 'sandbox-console.log')}", "-serial", "chardev:con",
                "-device", "virtio-serial-device", "-chardev", f"file,id=out,path={output}", "-device", "virtconsole,chardev=out",
                "-global", "virtio-mmio.force-legacy=false",
                "-chardev", f"socket,id=fs0,path={os.path.join(work, 'root.sock')}", "-device", "vhost-user-fs-device,chardev=fs0,tag=hostroot",
                "-chardev", f"socket,id=fs1,path={os.path.join(work, 'out.sock')}", "-device", "vhost-user-fs-device,chardev=fs1,tag=out"]
        console = os.path.join(out, "sandbox-console.log")

        def console_text():
            try:
                return open(console, errors="replace").read()
            except OSError:
                return ""

        for attempt in (1, 2):
            for sock in ("root.sock", "out.sock"):
                if os.path.exists(os.path.join(work, sock)):
                    os.unlink(os.path.join(work, sock))
            procs.append(start_virtiofsd("/", os.path.join(work, "root.sock"), log, "always"))
            procs.append(start_virtiofsd(out, os.path.join(work, "out.sock"), log, "auto"))
            q = subprocess.Popen(qemu, stdout=log, stderr=log)
            procs.append(q)
            # L1's init says it is up on the serial console within seconds; an emulated boot that
            # has not got there in BOOT_LIMIT has hung (seen once in tens of boots), and is retried
            # once, loudly.
            end = time.time() + BOOT_LIMIT
            while time.time() < end and q.poll() is None and "sandbox-init" not in console_text():
                time.sleep(0.2)
            if "sandbox-init" in console_text() or q.poll() is not None:
                break
            say(f"L1 did not reach its init within {BOOT_LIMIT} s (attempt {attempt}); its console: {console_text()[-500:]!r}")
            for p in procs:
                p.kill()
                p.wait()
            procs.clear()
        else:
            return 125, ""
        collected = []
        done = threading.Event()

        def follow():
            with open(output, "rb") as f:
                while True:
                    chunk = f.read(65536)
                    if chunk:
                        text = chunk.decode(errors="replace")
                        collected.append(text)
                        if stream:
                            stream.write(text)
                            stream.flush()
                    elif done.is_set():
                        return
                    else:
                        time.sleep(0.1)

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        try:
            q.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            q.kill()
            say(f"the sandbox ran past {timeout} s and was stopped")
        done.set()
        t.join()
        try:
            rc = int(open(rc_path).read().strip())
        except (OSError, ValueError):
            text = console_text()
            seen = re.findall(r"sandbox-init: status (\d+)", text)
            if seen:
                # L1 read the status back but the host does not see the file: trust L1's word.
                say(f"L1 reported status {seen[-1]} but {rc_path} is missing on the host")
                rc = int(seen[-1])
            else:
                say(f"L1 ended without the command's status; its console ends:\n{text[-4000:]}")
                rc = 125
        return rc, "".join(collected)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def main():
    ap = argparse.ArgumentParser(description="Run a command in an L1 machine with emulated AMD SVM (see the top of this file).")
    ap.add_argument("--mem", default="3G", help="L1's memory (e.g. 3G, 2048M)")
    ap.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", help="a host directory shared read-write at the same path")
    ap.add_argument("--env", action="append", default=[], help="pass this environment variable in (repeatable)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("command", nargs="+")
    a = ap.parse_args()
    m = a.mem.upper()
    mem = int(m[:-1]) * 1024 if m.endswith("G") else int(m.rstrip("M"))
    rc, _ = run(a.command, mem_mb=mem, cpus=a.cpus, out=a.out, env_names=a.env, timeout=a.timeout)
    sys.exit(rc)


if __name__ == "__main__":
    main()
