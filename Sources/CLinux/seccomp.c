// A seccomp allowlist for the calling process: every thread (TSYNC), no_new_privs first. System calls
// are named, not numbered, so a policy reads as a list of names; this table is what can be named.
// A call outside the list raises SIGSYS (SECCOMP_RET_TRAP), whose handler writes which call it was to
// stderr and ends the process with status 159 (128 + SIGSYS). A process that blocks or ignores SIGSYS
// is killed by the kernel instead, and a policy should not allow rt_sigaction, so the handler cannot be
// replaced once the filter is in. A foreign architecture or an x32 call kills the process outright.
#include "clinux.h"
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NAME(n)                                                                                                        \
    {                                                                                                                  \
#n, SYS_##n                                                                                                    \
    }
static const struct {
    const char *name;
    long nr;
} syscalls[] = {
    NAME(accept),
    NAME(accept4),
    NAME(bind),
    NAME(brk),
    NAME(clock_gettime),
    NAME(clock_nanosleep),
    NAME(clone),
    NAME(clone3),
    NAME(close),
    NAME(connect),
    NAME(epoll_create1),
    NAME(epoll_ctl),
    NAME(epoll_pwait),
    NAME(epoll_wait),
    NAME(eventfd2),
    NAME(execve),
    NAME(exit),
    NAME(exit_group),
    NAME(fcntl),
    NAME(fdatasync),
    NAME(fstat),
    NAME(fsync),
    NAME(ftruncate),
    NAME(futex),
    NAME(getcwd),
    NAME(getpid),
    NAME(getppid),
    NAME(getrandom),
    NAME(getsockopt),
    NAME(gettid),
    NAME(gettimeofday),
    NAME(ioctl),
    NAME(kill),
    NAME(listen),
    NAME(lseek),
    NAME(madvise),
    NAME(memfd_create),
    NAME(mmap),
    NAME(mprotect),
    NAME(mremap),
    NAME(munmap),
    NAME(nanosleep),
    NAME(newfstatat),
    NAME(openat),
    NAME(pipe2),
    NAME(poll),
    NAME(ppoll),
    NAME(prctl),
    NAME(pread64),
    NAME(preadv),
    NAME(prlimit64),
    NAME(pwrite64),
    NAME(pwritev),
    NAME(read),
    NAME(readlink),
    NAME(readv),
    NAME(recvfrom),
    NAME(recvmsg),
    NAME(rename),
    NAME(renameat),
    NAME(restart_syscall),
    NAME(rseq),
    NAME(rt_sigaction),
    NAME(rt_sigprocmask),
    NAME(rt_sigreturn),
    NAME(sched_getaffinity),
    NAME(sched_setaffinity),
    NAME(sched_yield),
    NAME(sendmsg),
    NAME(sendto),
    NAME(set_robust_list),
    NAME(set_tid_address),
    NAME(setsockopt),
    NAME(shutdown),
    NAME(sigaltstack),
    NAME(socket),
    NAME(statx),
    NAME(tgkill),
    NAME(tkill),
    NAME(unlink),
    NAME(unlinkat),
    NAME(write),
    NAME(writev),
};
#define NSYSCALLS (int)(sizeof syscalls / sizeof syscalls[0])

long clinux_syscall_number(const char *name)
{
    for (int i = 0; i < NSYSCALLS; i++)
        if (!strcmp(syscalls[i].name, name)) return syscalls[i].nr;
    return -1;
}

const char *clinux_syscall_name(long nr)
{
    for (int i = 0; i < NSYSCALLS; i++)
        if (syscalls[i].nr == nr) return syscalls[i].name;
    return NULL;
}

static void put(const char *s) { (void)!write(2, s, strlen(s)); }

// Async-signal-safe: write(2) and _exit(2) only.
static void on_sigsys(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    char num[24];
    int i = sizeof num - 1;
    num[i] = 0;
    long nr = info->si_syscall;
    do {
        num[--i] = (char)('0' + nr % 10);
        nr /= 10;
    } while (nr > 0 && i > 0);
    const char *name = clinux_syscall_name(info->si_syscall);
    put("slurm-vm-vmm: seccomp: system call ");
    put(num + i);
    if (name) {
        put(" (");
        put(name);
        put(")");
    }
    put(" is outside the VMM's allowlist; the VMM was stopped\n");
    _exit(159);
}

int clinux_seccomp_allow(const char *const *names, int count, int *unknown)
{
    if (count < 1 || count > 200) return -EINVAL;
    struct sock_filter f[8 + 200];
    int n = 0;
    // The architecture, then the call number; x32 calls (bit 30) never match an allowed number.
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < count; i++) {
        long nr = clinux_syscall_number(names[i]);
        if (nr < 0) {
            if (unknown) *unknown = i;
            return -EINVAL;
        }
        // Equal: skip to the ALLOW after the list (count - i - 1 jumps, then the TRAP).
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, (unsigned char)(count - i), 0);
    }
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, NULL) != 0) return -errno;
    sigset_t sys;
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    if (sigprocmask(SIG_UNBLOCK, &sys, NULL) != 0) return -errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    // With TSYNC, a positive result names a thread that could not take the filter.
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
    return r == 0 ? 0 : r < 0 ? -errno : -EAGAIN;
}

// The file guard (see clinux.h). Each rule reloads the call number, so rules are independent blocks
// whose jumps stay inside them.
#define LD_NR        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define LD_ARG(i)    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args) + 8 * (i)) // low half
#define RET(v)       BPF_STMT(BPF_RET | BPF_K, (v))
#define SPECIAL_BITS 06000u               // S_ISUID | S_ISGID
#define O_CREAT_BITS (0100u | 020000000u) // O_CREAT | __O_TMPFILE

static int pretend(struct sock_filter *f, int n, long nr)
{
    f[n++] = (struct sock_filter)LD_NR;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | 0); // returns 0: done, nothing changed
    return n;
}

// Refuses `nr` when argument `mode` has a set-id bit; with flags >= 0, only when that argument creates.
static int no_special_mode(struct sock_filter *f, int n, long nr, int flags, int mode)
{
    f[n++] = (struct sock_filter)LD_NR;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, flags >= 0 ? 6 : 4);
    if (flags >= 0) {
        f[n++] = (struct sock_filter)LD_ARG(flags);
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_CREAT_BITS, 0, 3);
    }
    f[n++] = (struct sock_filter)LD_ARG(mode);
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, SPECIAL_BITS, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | EPERM);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    return n;
}

int clinux_seccomp_file_guard(void)
{
    static const long ids[] = {SYS_setuid,    SYS_setgid,   SYS_setreuid, SYS_setregid, SYS_setresuid,
                               SYS_setresgid, SYS_setfsuid, SYS_setfsgid, SYS_setgroups};
    struct sock_filter f[160];
    int n = 0;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
    // x32 calls (bit 30 set) would bypass every rule below, which compare exact numbers.
    f[n++] = (struct sock_filter)LD_NR;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
    for (unsigned i = 0; i < sizeof ids / sizeof ids[0]; i++) n = pretend(f, n, ids[i]);
    n = no_special_mode(f, n, SYS_chmod, -1, 1);
    n = no_special_mode(f, n, SYS_fchmod, -1, 1);
    n = no_special_mode(f, n, SYS_fchmodat, -1, 2);
    n = no_special_mode(f, n, 452 /* fchmodat2 */, -1, 2);
    n = no_special_mode(f, n, SYS_mkdir, -1, 1);
    n = no_special_mode(f, n, SYS_mkdirat, -1, 2);
    n = no_special_mode(f, n, SYS_mknod, -1, 1);
    n = no_special_mode(f, n, SYS_mknodat, -1, 2);
    n = no_special_mode(f, n, SYS_creat, -1, 1);
    n = no_special_mode(f, n, SYS_open, 1, 2);
    n = no_special_mode(f, n, SYS_openat, 2, 3);
    f[n++] = (struct sock_filter)LD_NR;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 437 /* openat2 */, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | ENOSYS);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0 ? 0 : -errno;
}
