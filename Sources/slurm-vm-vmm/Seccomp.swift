// The system calls the VMM may make once its machine is built: what vCPU threads, device threads and
// the Swift runtime need while a guest runs, and nothing that reaches beyond the process's open
// descriptors for new capability — no socket, connect or bind (the agent's socket listens and the
// vhost-user back ends are connected before), no exec, fork or kill, no memfd, no rt_sigaction (so the
// SIGSYS handler that reports a violation stays in place). Collected from strace of the guest suite in
// the SVM sandbox (agent, 10 MB of output, shares, network, MPI) and from reading the code paths that
// run after the filter (docs/security.md lists them).

import CLinux
#if canImport(Glibc)
import Glibc
#endif

enum Seccomp {
    static let allowed = [
        // memory: the Swift runtime's allocator, guest-memory bookkeeping
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise",
        // threads: vCPU, agent-channel, virtio-fs watcher and network threads; their kicks and pinning
        "clone", "clone3", "set_robust_list", "rseq", "set_tid_address", "exit", "exit_group", "futex",
        "gettid", "getpid", "tgkill", "tkill", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
        "sched_setaffinity", "sched_getaffinity", "sched_yield", "nanosleep", "clock_nanosleep", "clock_gettime",
        "gettimeofday", "getrandom",
        // descriptors already open: KVM and tap ioctls, the console log, the disk, eventfds, sockets
        "ioctl", "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "lseek",
        "fdatasync", "fsync", "fcntl", "close", "poll", "ppoll", "accept", "accept4", "sendto", "recvfrom",
        "sendmsg", "recvmsg", "shutdown", "getsockopt", "fstat", "newfstatat", "statx",
        // the ready file and the report (written to a temporary name and renamed), /proc/self/status
        "openat", "rename", "unlink",
    ]

    /// Installs the filter on every thread of the process, or ends the VMM saying why it cannot.
    static func confine() throws {
        var pointers = allowed.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        var unknown: Int32 = -1
        let r = pointers.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: p.count) {
                clinux_seccomp_allow($0, Int32(p.count), &unknown)
            }
        }
        guard r == 0 else {
            let what =
                unknown >= 0
                ? "the allowlist names '\(allowed[Int(unknown)])', which the platform layer does not know" : String(cString: strerror(-r))
            throw SeccompError(reason: "cannot install the seccomp filter: \(what)")
        }
    }
}

struct SeccompError: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}
