// Small Linux helpers Swift cannot express directly: fork+exec with per-child setup (death signal,
// session, CPU affinity, descriptor layout), thread affinity by tid, the TSC, and a seccomp allowlist.
#ifndef CLINUX_H
#define CLINUX_H
#include <stdint.h>
#include <sys/types.h>

/// Options for clinux_spawn. `cpus` is a list of host CPU ids the child starts on (0 entries: inherit).
typedef struct {
    const char *path;                   // executable (absolute)
    char *const *argv;                  // NULL-terminated
    char *const *envp;                  // NULL-terminated; NULL inherits environ
    int stdin_fd, stdout_fd, stderr_fd; // -1: /dev/null
    int new_session;                    // setsid() in the child, so it survives our terminal's signals
    int death_signal;                   // 0: none; else the child gets it when we exit (PR_SET_PDEATHSIG)
    const int *cpus;
    int ncpus;       // initial affinity of the child
    const char *cwd; // NULL: inherit
    const int *pass_fds;
    int npass_fds; // the child gets pass_fds[i] as descriptor 3 + i (a tap for QEMU's -netdev tap,fd=3)
    // set_ids: the child becomes uid/gid (real, effective, saved; supplementary groups: `groups`,
    // usually none) with no_new_privs before exec, so it runs without capabilities; cwd is entered
    // before that.
    int set_ids;
    uid_t uid;
    gid_t gid;
    // userns (instead of set_ids): the child enters a user namespace of its own in which it is root and
    // which maps nothing but root, to uid/gid outside; then new mount (private), network and IPC
    // namespaces. What it creates belongs to uid/gid; its capabilities reach nothing else.
    int userns;
    // file_guard: the filter of clinux_seccomp_file_guard is put on the child just before exec.
    int file_guard;
    const gid_t *groups;
    int ngroups;
    // Control groups the child joins first, while it still may: paths of their cgroup.procs files.
    const char *const *cgroups;
    int ncgroups;
    // jail: (needs root) the child gets mount, network and IPC namespaces of its own; its root becomes
    // an empty read-only tmpfs holding only jail_binds (source, destination, …: each source, free of
    // symbolic links, bound at its destination; read-only, or writable where jail_writable[i]; no
    // set-uid, and no devices unless it is a device node),
    // jail_links (symbolic links: path, target, path, target, …), /dev/null, /dev/fd and a /proc in
    // which it sees only its own uid's processes. The executable is opened before and run by its
    // descriptor, so it need not be inside (a static binary needs nothing else). cwd, if given, must
    // be inside.
    int jail;
    const char *const *jail_binds;
    const int *jail_writable;
    int njail_binds;
    const char *const *jail_links;
    int njail_links;
    // Output: on failure, the step of the child's setup that failed (clinux_spawn_step_name) and, for
    // a jail bind or link, its index (else -1).
    int failed_step;
    int failed_index;
} clinux_spawn_opts;

/// What a child was doing when clinux_spawn failed with failed_step (a short phrase), or NULL.
const char *clinux_spawn_step_name(int step);

/// Starts a child; returns its pid, or -errno. An exec failure in the child is reported as -errno too
/// (through a close-on-exec pipe), so the caller never mistakes a missing binary for a started one.
pid_t clinux_spawn(clinux_spawn_opts *o);

/// Opens the existing tap device `name` (IFF_TAP, no packet info, with virtio-net headers so QEMU can
/// offload): the descriptor a VMM's virtio-net uses. Returns the descriptor (close-on-exec) or -errno.
int clinux_open_tap(const char *name);

/// sched_setaffinity / sched_getaffinity for any thread id (0: the caller). Return 0 or -errno.
int clinux_set_affinity(pid_t tid, const int *cpus, int ncpus);
/// Fills `out` with up to `cap` CPU ids of the thread's affinity mask; returns how many, or -errno.
int clinux_get_affinity(pid_t tid, int *out, int cap);

/// The time-stamp counter (rdtsc), or 0 where there is none.
uint64_t clinux_rdtsc(void);

/// Confines the calling process (every thread) to the named system calls: no_new_privs, then a
/// seccomp filter. A call outside the list stops the process with status 159 after writing which call
/// it was to stderr (seccomp.c). Returns 0, or -errno; -EINVAL with `*unknown` set to the index of a
/// name this layer does not know.
int clinux_seccomp_allow(const char *const *names, int count, int *unknown);
/// For a file server whose user namespace maps only one uid (spawn's `userns`): a seccomp filter
/// under which changes of uid, gid and groups succeed without effect (so a server that switches to each
/// client's ids keeps acting as its one mapped identity), and a mode with a set-uid or set-gid bit is
/// refused with EPERM wherever a file's mode is set (chmod, fchmod, fchmodat, open/openat/creat with
/// O_CREAT or O_TMPFILE, mkdir, mknod); openat2, whose mode this filter cannot see, is ENOSYS.
/// Sets no_new_privs. Returns 0 or -errno.
int clinux_seccomp_file_guard(void);
/// The number of a system call this layer can name, or -1; and the name of a number, or NULL.
long clinux_syscall_number(const char *name);
const char *clinux_syscall_name(long nr);

/// Linux's gettid().
pid_t clinux_gettid(void);

/// The peer of a connected Unix socket (SO_PEERCRED). Returns 0 or -errno.
int clinux_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/// send(2) of `len` bytes (at least 1) with `nfds` descriptors attached (SCM_RIGHTS). Returns bytes
/// sent or -errno.
long clinux_send_with_fds(int fd, const void *buf, unsigned long len, const int *fds, int nfds);

/// recv(2) into `buf`, collecting up to `maxfds` attached descriptors (close-on-exec) into `fds` and
/// their number into `*nfds`; descriptors beyond `maxfds` are closed. Returns bytes or -errno.
long clinux_recv_with_fds(int fd, void *buf, unsigned long len, int *fds, int maxfds, int *nfds);
/// An anonymous memory file (memfd) of `size` bytes, close-on-exec, of 2 MiB hugetlb pages when
/// `hugetlb`; returns its descriptor or -errno. Guest RAM shared with a vhost-user backend lives in one.
int clinux_memfd(const char *name, uint64_t size, int hugetlb);

/// Makes an open tap (IFF_VNET_HDR) carry `hdr_size`-byte virtio-net headers and not block; 0 or -errno.
int clinux_tap_prepare(int fd, int hdr_size);

/// A close-on-exec, non-blocking eventfd, or -errno.
int clinux_eventfd(void);

#endif
