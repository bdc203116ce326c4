#define _GNU_SOURCE
#include "clinux.h"
#include "jail.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

// The steps of a child's setup, so a failure says which one failed.
enum {
    STEP_CGROUP = 1,
    STEP_SESSION,
    STEP_EXECUTABLE,
    STEP_CWD,
    STEP_IDENTITY,
    STEP_USERNS,
    STEP_DEATH_SIGNAL,
    STEP_AFFINITY,
    STEP_DESCRIPTORS,
    STEP_FILE_GUARD,
    STEP_EXEC,
};

const char *clinux_spawn_step_name(int step)
{
    switch (step) {
    case STEP_CGROUP: return "joining its control groups";
    case STEP_SESSION: return "starting its session";
    case STEP_EXECUTABLE: return "opening its executable";
    case STEP_CWD: return "entering its working directory";
    case STEP_IDENTITY: return "taking its uid and gid";
    case STEP_USERNS: return "entering its user namespace";
    case STEP_DEATH_SIGNAL: return "setting its death signal";
    case STEP_AFFINITY: return "setting its CPU affinity";
    case STEP_DESCRIPTORS: return "arranging its descriptors";
    case STEP_FILE_GUARD: return "installing its seccomp filter";
    case STEP_EXEC: return "executing it";
    case JAIL_STEP_NAMESPACES: return "making its mount, network and IPC namespaces";
    case JAIL_STEP_ROOT: return "mounting its root (a tmpfs over /tmp)";
    case JAIL_STEP_PIVOT: return "pivot_root into its root (a chrooted runner cannot)";
    case JAIL_STEP_BIND: return "binding a path into its root";
    case JAIL_STEP_DEVICES: return "making its /dev";
    case JAIL_STEP_LINK: return "making a symbolic link in its root";
    case JAIL_STEP_PROC: return "mounting its /proc";
    case JAIL_STEP_DETACH: return "detaching the node's file system";
    default: return NULL;
    }
}

// What a failing child tells its parent through the close-on-exec pipe.
typedef struct {
    int err, step, index;
} child_error;

static void child_fail_at(int pipefd, int err, int step, int index)
{
    child_error c = {err, step, index};
    (void)!write(pipefd, &c, sizeof c);
    _exit(127);
}

#define child_fail(fd, err) child_fail_at(fd, err, step, -1)

// Writes `text` to /proc/<pid>/<file> (a user namespace's maps); 0 or -errno.
static int write_proc(pid_t pid, const char *file, const char *text)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int e = n == (ssize_t)strlen(text) ? 0 : n < 0 ? -errno : -EIO;
    close(fd);
    return e;
}

// The parent's half of a child's user namespace: once the child has made it (a byte on `ready`), map
// its root to uid/gid (only a process outside the namespace with CAP_SETUID/CAP_SETGID may map ids
// other than its own), then let it go on (a byte on `go`). 0 or -errno; the child ends if we fail.
static int map_user_namespace(pid_t pid, int ready, int go, uid_t uid, gid_t gid)
{
    char b;
    ssize_t n;
    do {
        n = read(ready, &b, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) return 0; // the child failed before: its error comes through the exec pipe
    char map[48];
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
    int e = write_proc(pid, "uid_map", map);
    if (e == 0) e = write_proc(pid, "setgroups", "deny");
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
    if (e == 0) e = write_proc(pid, "gid_map", map);
    if (e == 0 && write(go, &b, 1) != 1) e = -errno;
    return e;
}

pid_t clinux_spawn(clinux_spawn_opts *o)
{
    o->failed_step = 0;
    o->failed_index = -1;
    int p[2], ready[2] = {-1, -1}, go[2] = {-1, -1};
    if (pipe2(p, O_CLOEXEC) != 0) return -errno;
    if (o->userns && (pipe2(ready, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0)) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        if (ready[0] >= 0) close(ready[0]), close(ready[1]);
        return -e;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        if (o->userns) close(ready[0]), close(ready[1]), close(go[0]), close(go[1]);
        return -e;
    }
    if (pid == 0) {
        int step = STEP_CGROUP;
        close(p[0]);
        // Signals the parent may have blocked or ignored must not leak into the child.
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        for (int s = 1; s < NSIG; s++)
            if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
        for (int i = 0; i < o->ncgroups; i++) {
            int fd = open(o->cgroups[i], O_WRONLY | O_CLOEXEC);
            if (fd < 0 || write(fd, "0", 1) != 1) child_fail(p[1], errno); // "0": the writer itself
            close(fd);
        }
        step = STEP_SESSION;
        if (o->new_session && setsid() < 0) child_fail(p[1], errno);
        // A jailed child runs its executable by descriptor, opened while the node's files are in view.
        int exec_fd = -1;
        if (o->jail) {
            step = STEP_EXECUTABLE;
            if ((exec_fd = open(o->path, O_PATH | O_CLOEXEC)) < 0) child_fail(p[1], errno);
            // Above the numbers the standard and passed descriptors will take.
            int high = fcntl(exec_fd, F_DUPFD_CLOEXEC, 3 + (o->npass_fds > 0 ? o->npass_fds : 0));
            if (high < 0) child_fail(p[1], errno);
            close(exec_fd);
            exec_fd = high;
            clinux_jail j = {o->jail_binds, o->jail_writable, o->njail_binds, o->jail_links, o->njail_links};
            int index, e = clinux_jail_enter(&j, &step, &index);
            if (e < 0) child_fail_at(p[1], -e, step, index);
        }
        // The directory first (its parents may be closed to the new identity), then the identity,
        // then the death signal: a change of credentials clears it.
        step = STEP_CWD;
        if (o->cwd && chdir(o->cwd) != 0) child_fail(p[1], errno);
        step = STEP_IDENTITY;
        if (o->set_ids) {
            if (setgroups((size_t)o->ngroups, o->groups) != 0 || setresgid(o->gid, o->gid, o->gid) != 0 ||
                setresuid(o->uid, o->uid, o->uid) != 0)
                child_fail(p[1], errno);
            if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(p[1], errno);
        }
        step = STEP_USERNS;
        if (o->userns) {
            close(ready[0]);
            close(go[1]);
            char b = 1;
            if (unshare(CLONE_NEWUSER) != 0) child_fail(p[1], errno);
            if (write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) != 1) _exit(127); // the parent gave up
            close(ready[1]);
            close(go[0]);
            if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) child_fail(p[1], errno);
            if (unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC) != 0) child_fail(p[1], errno);
            // Nothing the child mounts travels back to the node's mounts.
            if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) child_fail(p[1], errno);
            if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(p[1], errno);
        }
        step = STEP_DEATH_SIGNAL;
        if (o->death_signal) {
            if (prctl(PR_SET_PDEATHSIG, o->death_signal) != 0) child_fail(p[1], errno);
            if (getppid() != parent) _exit(1); // the parent died before prctl took effect
        }
        step = STEP_AFFINITY;
        if (o->ncpus > 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            for (int i = 0; i < o->ncpus; i++) CPU_SET(o->cpus[i], &set);
            if (sched_setaffinity(0, sizeof set, &set) != 0) child_fail(p[1], errno);
        }
        step = STEP_DESCRIPTORS;
        int fds[3] = {o->stdin_fd, o->stdout_fd, o->stderr_fd};
        int null = -1;
        for (int i = 0; i < 3; i++) {
            if (fds[i] < 0) {
                if (null < 0 && (null = open("/dev/null", O_RDWR)) < 0) child_fail(p[1], errno);
                fds[i] = null;
            }
        }
        // Move sources above 2 first so dup2 into 0..2 never clobbers a source still needed.
        for (int i = 0; i < 3; i++) {
            if (fds[i] <= 2) {
                int d = fcntl(fds[i], F_DUPFD, 3);
                if (d < 0) child_fail(p[1], errno);
                fds[i] = d;
            }
        }
        for (int i = 0; i < 3; i++)
            if (dup2(fds[i], i) < 0) child_fail(p[1], errno);
        // Passed descriptors go to 3, 4, …: first every source (and the error pipe) above the targets,
        // so no dup2 clobbers a source still needed.
        int floor = 3 + (o->npass_fds > 0 ? o->npass_fds : 0);
        int err_fd = p[1];
        if (err_fd < floor && (err_fd = fcntl(p[1], F_DUPFD_CLOEXEC, floor)) < 0) child_fail(p[1], errno);
        int moved[64];
        if (o->npass_fds > 64) child_fail(err_fd, EINVAL);
        for (int i = 0; i < o->npass_fds; i++)
            if ((moved[i] = fcntl(o->pass_fds[i], F_DUPFD_CLOEXEC, floor)) < 0) child_fail(err_fd, errno);
        for (int i = 0; i < o->npass_fds; i++)
            if (dup2(moved[i], 3 + i) < 0) child_fail(err_fd, errno);
        // Everything else is closed: the child must not hold our sockets or pipes open.
        long maxfd = sysconf(_SC_OPEN_MAX);
        if (maxfd < 0 || maxfd > 65536) maxfd = 65536;
        for (int fd = floor; fd < maxfd; fd++)
            if (fd != err_fd && fd != exec_fd) close(fd);
        step = STEP_FILE_GUARD;
        if (o->file_guard) {
            int e = clinux_seccomp_file_guard();
            if (e < 0) child_fail(err_fd, -e);
        }
        step = STEP_EXEC;
        if (exec_fd >= 0)
            syscall(SYS_execveat, exec_fd, "", o->argv, o->envp ? o->envp : environ, AT_EMPTY_PATH);
        else
            execve(o->path, o->argv, o->envp ? o->envp : environ);
        child_fail(err_fd, errno);
    }
    close(p[1]);
    if (o->userns) {
        close(ready[1]);
        close(go[0]);
        int e = map_user_namespace(pid, ready[0], go[1], o->uid, o->gid);
        close(ready[0]);
        close(go[1]);
        if (e < 0) {
            kill(pid, SIGKILL);
            int st;
            waitpid(pid, &st, 0);
            close(p[0]);
            return e;
        }
    }
    child_error c;
    ssize_t n;
    do {
        n = read(p[0], &c, sizeof c);
    } while (n < 0 && errno == EINTR);
    close(p[0]);
    if (n == (ssize_t)sizeof c) {
        int st;
        waitpid(pid, &st, 0);
        o->failed_step = c.step;
        o->failed_index = c.index;
        return -c.err;
    }
    return pid;
}

int clinux_set_affinity(pid_t tid, const int *cpus, int ncpus)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < ncpus; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return -EINVAL;
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(tid, sizeof set, &set) == 0 ? 0 : -errno;
}

int clinux_get_affinity(pid_t tid, int *out, int cap)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(tid, sizeof set, &set) != 0) return -errno;
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < cap; c++)
        if (CPU_ISSET(c, &set)) out[n++] = c;
    return n;
}

uint64_t clinux_rdtsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
#else
    return 0;
#endif
}

pid_t clinux_gettid(void) { return (pid_t)syscall(SYS_gettid); }

int clinux_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid)
{
    struct ucred c;
    socklen_t len = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0) return -errno;
    *pid = c.pid;
    *uid = c.uid;
    *gid = c.gid;
    return 0;
}

#define CLINUX_MAX_FDS 8

long clinux_send_with_fds(int fd, const void *buf, unsigned long len, const int *fds, int nfds)
{
    if (nfds < 0 || nfds > CLINUX_MAX_FDS || len == 0) return -EINVAL;
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * CLINUX_MAX_FDS)];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        m.msg_control = ctl.space;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    for (;;) {
        ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (r >= 0) return r;
        if (errno != EINTR) return -errno;
    }
}

long clinux_recv_with_fds(int fd, void *buf, unsigned long len, int *fds, int maxfds, int *nfds)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * CLINUX_MAX_FDS)];
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space, .msg_controllen = sizeof ctl.space};
    *nfds = 0;
    ssize_t r;
    do {
        r = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *got = (int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++) {
            if (*nfds < maxfds)
                fds[(*nfds)++] = got[i];
            else
                close(got[i]);
        }
    }
    return r;
}

int clinux_open_tap(const char *name)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (strlen(name) >= sizeof ifr.ifr_name) {
        close(fd);
        return -ENAMETOOLONG;
    }
    strcpy(ifr.ifr_name, name);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26) /* log2(2 MiB) << MFD_HUGE_SHIFT */
#endif

int clinux_memfd(const char *name, uint64_t size, int hugetlb)
{
    unsigned flags = MFD_CLOEXEC;
    if (hugetlb) flags |= MFD_HUGETLB | MFD_HUGE_2MB;
    int fd = memfd_create(name, flags);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int clinux_eventfd(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int clinux_tap_prepare(int fd, int hdr_size)
{
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr_size) != 0) return -errno;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) return -errno;
    return 0;
}
