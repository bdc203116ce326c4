/* slurm-vm-agent: the guest side of slurm-vm. Runs as the guest's init (PID 1): mounts the basic file
 * systems, loads the image's kernel modules, names the guest, then serves the host over one framed
 * byte channel (protocol.h): it runs commands with the requested identity, environment and working
 * directory, streams their stdin/stdout/stderr, delivers signals and reports exit status.
 *
 * Robustness rules, because a dying PID 1 panics the guest: nothing a command does (no output, endless
 * output, closed stdin, exit by signal, orphaned children) may stop the agent; a malformed frame is
 * skipped; allocation failure fails one session, not the agent.
 *
 * Also runs on a host for tests: `slurm-vm-agent --fd N` serves an already-open descriptor, without the
 * init duties.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

extern char **environ;

static int chan = -1;     /* the channel to the host */
static int is_init = 0;   /* running as PID 1 */
static int host_gone = 0; /* the channel reported hang-up: wait for the host to come back */

static void logmsg(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    /* The console (kernel log) is where an admin looks when a guest never becomes ready. */
    (void)!write(2, "slurm-vm-agent: ", 16);
    (void)!write(2, buf, n);
}

/* ---------- little-endian encoding ---------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int failed;
} buf_t;

static void b_reserve(buf_t *b, size_t more)
{
    if (b->failed) return;
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    uint8_t *np = realloc(b->p, cap);
    if (!np) {
        b->failed = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
}
static void b_put(buf_t *b, const void *d, size_t n)
{
    b_reserve(b, n);
    if (!b->failed) {
        memcpy(b->p + b->len, d, n);
        b->len += n;
    }
}
/* For buffers that outlive one message: appends, or returns 0 (out of memory) leaving it as it was. */
static int b_append(buf_t *b, const void *d, size_t n)
{
    b_put(b, d, n);
    if (!b->failed) return 1;
    b->failed = 0;
    return 0;
}
static void b_drop(buf_t *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}
static void b_u32(buf_t *b, uint32_t v)
{
    uint8_t x[4] = {v, v >> 8, v >> 16, v >> 24};
    b_put(b, x, 4);
}
static void b_u64(buf_t *b, uint64_t v)
{
    b_u32(b, (uint32_t)v);
    b_u32(b, (uint32_t)(v >> 32));
}
static void b_str(buf_t *b, const char *s)
{
    size_t n = strlen(s);
    b_u32(b, (uint32_t)n);
    b_put(b, s, n);
}

typedef struct {
    const uint8_t *p;
    size_t len, off;
    int bad;
} rd_t;
static uint32_t r_u32(rd_t *r)
{
    if (r->bad || r->len - r->off < 4) {
        r->bad = 1;
        return 0;
    }
    const uint8_t *x = r->p + r->off;
    r->off += 4;
    return (uint32_t)x[0] | (uint32_t)x[1] << 8 | (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24;
}
static uint64_t r_u64(rd_t *r)
{
    uint64_t lo = r_u32(r);
    return lo | (uint64_t)r_u32(r) << 32;
}
/* A NUL-terminated copy (strings with an embedded NUL are refused: they cannot be argv or env). */
static char *r_str(rd_t *r)
{
    uint32_t n = r_u32(r);
    if (r->bad || r->len - r->off < n) {
        r->bad = 1;
        return NULL;
    }
    if (memchr(r->p + r->off, 0, n)) {
        r->bad = 1;
        return NULL;
    }
    char *s = malloc(n + 1);
    if (!s) {
        r->bad = 1;
        return NULL;
    }
    memcpy(s, r->p + r->off, n);
    s[n] = 0;
    r->off += n;
    return s;
}

/* ---------- sending frames ---------- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd pf = {fd, POLLOUT, 0};
                poll(&pf, 1, 100);
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void send_frame(uint8_t type, uint32_t id, const void *payload, size_t len)
{
    if (chan < 0 || host_gone) return;
    uint8_t h[SVA_HEADER] = {SVA_MAGIC & 0xff, SVA_MAGIC >> 8, type, 0,        id,        id >> 8,
                             id >> 16,         id >> 24,       len,  len >> 8, len >> 16, len >> 24};
    if (write_all(chan, h, sizeof h) != 0 || (len && write_all(chan, payload, len) != 0)) {
        if (errno != EPIPE) logmsg("cannot write to the host channel: %s", strerror(errno));
        host_gone = 1;
    }
}

static void send_error(uint32_t id, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf_t b = {0};
    b_str(&b, msg);
    if (!b.failed) send_frame(SVA_ERROR, id, b.p, b.len);
    free(b.p);
}

/* ---------- sessions (one per command) ---------- */

typedef struct session {
    uint32_t id;
    pid_t pid;
    int out, err, in;  /* our ends of the command's pipes; -1 once closed */
    buf_t inbuf;       /* stdin the command has not read yet */
    int in_eof;        /* the host ended stdin: close once the buffer drains */
    int relay;         /* our end of the command's relay socket (descriptor 3 in the command), or -1 */
    buf_t relaybuf;    /* RELAY bytes the command has not read yet */
    int relay_eof;     /* the host ended the relay: shut our side once the buffer drains */
    int pmi;           /* the relay is a PMI-1 channel: see pmi_filter */
    buf_t pmiline;     /* the command's PMI message being assembled */
    int tty;           /* the command runs on a pseudo-terminal: `out` is its master, `in` a copy */
    uint64_t quiet_ms; /* tty: when the command was reaped or last wrote, whichever is later */
    int reaped, status;
    struct session *next;
} session;

static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static session *sessions;

static session *find(uint32_t id)
{
    for (session *s = sessions; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void finish(session *s)
{
    int32_t v[2];
    if (WIFEXITED(s->status)) {
        v[0] = WEXITSTATUS(s->status);
        v[1] = 0;
    } else if (WIFSIGNALED(s->status)) {
        v[0] = -1;
        v[1] = WTERMSIG(s->status);
    } else {
        v[0] = -1;
        v[1] = 0;
    }
    uint8_t p[8] = {v[0], v[0] >> 8, v[0] >> 16, v[0] >> 24, v[1], v[1] >> 8, v[1] >> 16, v[1] >> 24};
    send_frame(SVA_EXIT, s->id, p, 8);
    close_fd(&s->in);
    close_fd(&s->out);
    close_fd(&s->err);
    close_fd(&s->relay);
    for (session **pp = &sessions; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    free(s->inbuf.p);
    free(s->relaybuf.p);
    free(s->pmiline.p);
    free(s);
}

/* A session is over when its command has been reaped and its output pipes have reached end of file,
 * so no output written before exit is lost. */
static void maybe_finish(session *s)
{
    /* A terminal stays open while anything holds its other side (a process the command left in the
     * background): once the command has ended, what it wrote has arrived within SVA_TTY_LINGER_MS. */
    if (s->tty && s->reaped && s->out >= 0 && now_ms() - s->quiet_ms >= SVA_TTY_LINGER_MS) close_fd(&s->out);
    if (s->reaped && s->out < 0 && s->err < 0) finish(s);
}

static void free_strv(char **v)
{
    if (!v) return;
    for (char **p = v; *p; p++) free(*p);
    free(v);
}

static void child_fail(const char *cmd, int err)
{
    char msg[512];
    int code = SVA_EXIT_CANNOT_EXEC;
    if (err == ENOENT) {
        snprintf(msg, sizeof msg, "slurm-vm: %s: command not found\n", cmd);
        code = SVA_EXIT_NOT_FOUND;
    } else
        snprintf(msg, sizeof msg, "slurm-vm: %s: %s\n", cmd, strerror(err));
    (void)!write(2, msg, strlen(msg));
    _exit(code);
}

/* A pseudo-terminal of rows x cols for a command: its master (non-blocking, close-on-exec) and the
 * path of its other side, or -1. */
static int open_terminal(uint32_t rows, uint32_t cols, char *path, size_t size)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0) return -1;
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, path, size) != 0 || ioctl(m, TIOCSWINSZ, &ws) != 0 ||
        fcntl(m, F_SETFL, O_NONBLOCK) != 0) {
        int e = errno;
        close(m);
        errno = e;
        return -1;
    }
    return m;
}

/* In the command's child, after setsid: the terminal becomes its controlling terminal and its
 * standard descriptors, owned by the command's user as login would leave it. */
static void enter_terminal(const char *path, uid_t uid)
{
    int t = open(path, O_RDWR);
    if (t < 0 || ioctl(t, TIOCSCTTY, 0) != 0) child_fail(path, errno);
    /* Group tty (5), as Debian's login leaves it; the command works without (it holds the descriptors). */
    if (fchown(t, uid, 5) == 0) (void)!fchmod(t, 0620);
    for (int i = 0; i < 3; i++)
        if (dup2(t, i) < 0) child_fail(path, errno);
    if (t > 2) close(t);
}

static void start_session(uint32_t id, const uint8_t *p, size_t len)
{
    if (find(id)) {
        send_error(id, "session %u already exists", id);
        return;
    }
    rd_t r = {p, len, 0, 0};
    uint32_t uid = r_u32(&r), gid = r_u32(&r), ng = r_u32(&r);
    if (ng > 256) r.bad = 1;
    gid_t groups[256];
    for (uint32_t i = 0; i < ng && !r.bad; i++) groups[i] = r_u32(&r);
    char *cwd = r_str(&r);
    uint32_t argc = r_u32(&r);
    if (argc == 0 || argc > 65536) r.bad = 1;
    char **argv = r.bad ? NULL : calloc(argc + 1, sizeof *argv);
    for (uint32_t i = 0; argv && i < argc && !r.bad; i++) argv[i] = r_str(&r);
    uint32_t envc = r_u32(&r);
    if (envc > 65536) r.bad = 1;
    char **envp = r.bad ? NULL : calloc(envc + 2, sizeof *envp); /* + the relay's variable */
    for (uint32_t i = 0; envp && i < envc && !r.bad; i++) envp[i] = r_str(&r);
    /* Optional, so hosts that predate relays still talk to this agent. */
    char *relay_env = !r.bad && r.off < r.len ? r_str(&r) : NULL;
    if (relay_env && (!relay_env[0] || strchr(relay_env, '='))) {
        if (relay_env[0]) r.bad = 1; /* a variable name cannot hold '=' */
        free(relay_env);
        relay_env = NULL;
    }
    if (relay_env && envp && !r.bad) {
        /* The command finds its end of the relay through this variable: drop the host's value of it. */
        size_t k = strlen(relay_env), j = 0;
        for (uint32_t i = 0; i < envc; i++) {
            if (!strncmp(envp[i], relay_env, k) && envp[i][k] == '=')
                free(envp[i]);
            else
                envp[j++] = envp[i];
        }
        char *v = malloc(k + 8);
        if (v) snprintf(v, k + 8, "%s=%d", relay_env, SVA_RELAY_FD);
        envp[j++] = v;
        envp[j] = NULL;
        if (!v) r.bad = 1;
    }
    /* Optional after relay_env: the terminal's size, when the command is to get one. */
    uint32_t rows = 0, cols = 0;
    int want_tty = 0;
    if (!r.bad && r.off < r.len) {
        rows = r_u32(&r);
        cols = r_u32(&r);
        want_tty = !r.bad;
        if (want_tty && (rows == 0 || cols == 0 || rows > 65535 || cols > 65535)) r.bad = 1;
    }
    int want_relay = relay_env != NULL;
    int want_pmi = relay_env && !strcmp(relay_env, "PMI_FD");
    free(relay_env);
    if (r.bad || !argv || !envp) {
        send_error(id, "malformed or oversized EXEC request");
        uint8_t q[8] = {SVA_EXIT_CANNOT_EXEC, 0, 0, 0, 0, 0, 0, 0};
        send_frame(SVA_EXIT, id, q, 8);
        free(cwd);
        free_strv(argv);
        free_strv(envp);
        return;
    }
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, prel[2] = {-1, -1};
    char tty_path[64] = "";
    int master = -1;
    session *s = calloc(1, sizeof *s);
    if (!s ||
        (want_tty ? (master = open_terminal(rows, cols, tty_path, sizeof tty_path)) < 0 ||
                        (pin[1] = fcntl(master, F_DUPFD_CLOEXEC, 0)) < 0
                  : pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) ||
        (want_relay && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, prel))) {
        if (master >= 0) close(master);
        send_error(id, "cannot start %s: %s", argv[0], strerror(errno));
        uint8_t q[8] = {SVA_EXIT_CANNOT_EXEC, 0, 0, 0, 0, 0, 0, 0};
        send_frame(SVA_EXIT, id, q, 8);
        free(s);
        for (int i = 0; i < 2; i++) {
            if (pin[i] >= 0) close(pin[i]);
            if (pout[i] >= 0) close(pout[i]);
            if (perr[i] >= 0) close(perr[i]);
            if (prel[i] >= 0) close(prel[i]);
        }
        free(cwd);
        free_strv(argv);
        free_strv(envp);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int sig = 1; sig < NSIG; sig++)
            if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
        setsid(); /* its own process group, so a signal reaches everything it started */
        if (want_tty) {
            enter_terminal(tty_path, uid);
        } else {
            dup2(pin[0], 0);
            dup2(pout[1], 1);
            dup2(perr[1], 2);
        }
        /* dup2 clears close-on-exec on the copy; a descriptor already numbered 3 needs it cleared. */
        if (prel[1] == SVA_RELAY_FD)
            fcntl(SVA_RELAY_FD, F_SETFD, 0);
        else if (prel[1] >= 0)
            dup2(prel[1], SVA_RELAY_FD);
        if (ng > 0 || getuid() == 0) {
            if (setgroups(ng, groups) != 0 && getuid() == 0) child_fail("setgroups", errno);
        }
        if (getgid() != gid && setgid(gid) != 0) child_fail("setgid", errno);
        if (getuid() != uid && setuid(uid) != 0) child_fail("setuid", errno);
        if (cwd[0] && chdir(cwd) != 0) {
            /* As slurmstepd does: say so, and run in /tmp rather than not at all. */
            char msg[600];
            snprintf(msg, sizeof msg, "slurm-vm: cannot change to directory %s: %s; running in /tmp\n", cwd,
                     strerror(errno));
            (void)!write(2, msg, strlen(msg));
            if (chdir("/tmp") != 0) (void)!chdir("/");
        }
        environ = envp; /* execvp searches the PATH of the command's own environment */
        execvp(argv[0], argv);
        child_fail(argv[0], errno);
    }
    int fork_err = errno;
    if (!want_tty) {
        close(pin[0]);
        close(pout[1]);
        close(perr[1]);
    }
    if (prel[1] >= 0) close(prel[1]);
    if (pid < 0) {
        close(pin[1]);
        if (want_tty)
            close(master);
        else {
            close(pout[0]);
            close(perr[0]);
        }
        if (prel[0] >= 0) close(prel[0]);
        send_error(id, "cannot fork: %s", strerror(fork_err));
        uint8_t q[8] = {SVA_EXIT_CANNOT_EXEC, 0, 0, 0, 0, 0, 0, 0};
        send_frame(SVA_EXIT, id, q, 8);
        free(s);
        free(cwd);
        free_strv(argv);
        free_strv(envp);
        return;
    }
    s->id = id;
    s->pid = pid;
    s->in = pin[1];
    s->out = want_tty ? master : pout[0];
    s->err = want_tty ? -1 : perr[0];
    s->tty = want_tty;
    s->relay = prel[0];
    s->pmi = want_pmi;
    fcntl(s->in, F_SETFL, O_NONBLOCK);
    if (s->relay >= 0) fcntl(s->relay, F_SETFL, O_NONBLOCK);
    s->next = sessions;
    sessions = s;
    uint8_t q[4] = {pid, pid >> 8, pid >> 16, pid >> 24};
    send_frame(SVA_STARTED, id, q, 4);
    free(cwd);
    free_strv(argv);
    free_strv(envp);
}

static void ack_stdin(session *s, size_t n)
{
    uint8_t q[4] = {n, n >> 8, n >> 16, n >> 24};
    send_frame(SVA_STDIN_ACK, s->id, q, 4);
}

static void flush_stdin(session *s)
{
    while (s->in >= 0 && s->inbuf.len > 0) {
        ssize_t w = write(s->in, s->inbuf.p, s->inbuf.len);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            /* The command closed its stdin: what it did not read is dropped, as with a pipe. */
            ack_stdin(s, s->inbuf.len);
            s->inbuf.len = 0;
            close_fd(&s->in);
            return;
        }
        b_drop(&s->inbuf, (size_t)w);
        ack_stdin(s, (size_t)w);
    }
    if (s->in_eof && s->inbuf.len == 0) close_fd(&s->in);
}

static void on_stdin(session *s, const uint8_t *p, size_t len)
{
    if (len == 0) {
        s->in_eof = 1;
        flush_stdin(s);
        return;
    }
    if (s->in < 0) {
        ack_stdin(s, len);
        return;
    }
    if (s->inbuf.len + len > 4 * SVA_STDIN_WINDOW) {
        send_error(s->id, "stdin window exceeded; input dropped");
        ack_stdin(s, len);
        return;
    }
    if (!b_append(&s->inbuf, p, len)) {
        send_error(s->id, "out of memory buffering stdin");
        ack_stdin(s, len);
        return;
    }
    flush_stdin(s);
}

/* Our end of the relay is shut for both directions once either side is done with it. */
static void end_relay(session *s, int tell_host)
{
    if (s->relay < 0) return;
    close_fd(&s->relay);
    s->relaybuf.len = 0;
    if (tell_host) send_frame(SVA_RELAY_OUT, s->id, NULL, 0);
}

static void flush_relay(session *s)
{
    while (s->relay >= 0 && s->relaybuf.len > 0) {
        ssize_t w = send(s->relay, s->relaybuf.p, s->relaybuf.len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            end_relay(s, 1); /* the command closed its end */
            return;
        }
        b_drop(&s->relaybuf, (size_t)w);
    }
    if (s->relay >= 0 && s->relay_eof && s->relaybuf.len == 0) shutdown(s->relay, SHUT_WR);
}

static void on_relay(session *s, const uint8_t *p, size_t len)
{
    if (s->relay < 0) return;
    if (len == 0) {
        s->relay_eof = 1;
        flush_relay(s);
        return;
    }
    if (s->relaybuf.len + len > SVA_RELAY_BUFFER) {
        send_error(s->id, "the command left %u bytes of its relay unread; relay closed", SVA_RELAY_BUFFER);
        end_relay(s, 1);
        return;
    }
    if (!b_append(&s->relaybuf, p, len)) {
        send_error(s->id, "out of memory buffering the relay; relay closed");
        end_relay(s, 1);
        return;
    }
    flush_relay(s);
}

static void kill_all(int sig)
{
    for (session *s = sessions; s; s = s->next)
        if (!s->reaped) kill(-s->pid, sig);
}

/* ---------- init duties ---------- */

static char cmdline[4096];

static const char *cmdline_value(const char *key)
{
    static char val[512];
    size_t kl = strlen(key);
    for (char *p = cmdline; *p;) {
        while (*p == ' ' || *p == '\n') p++;
        char *e = p;
        while (*e && *e != ' ' && *e != '\n') e++;
        if ((size_t)(e - p) > kl && !strncmp(p, key, kl) && p[kl] == '=') {
            size_t n = (size_t)(e - p) - kl - 1;
            if (n >= sizeof val) n = sizeof val - 1;
            memcpy(val, p + kl + 1, n);
            val[n] = 0;
            return val;
        }
        p = e;
    }
    return NULL;
}

static void read_cmdline(void)
{
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    cmdline[n > 0 ? n : 0] = 0;
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data)
{
    mkdir(dst, 0755);
    if (mount(src, dst, type, flags, data) != 0 && errno != EBUSY)
        logmsg("mount %s on %s: %s", type, dst, strerror(errno));
}

/* Loads the modules listed, in dependency order, by the image builder. */
static void load_modules(void)
{
    FILE *f = fopen("/etc/slurm-vm/modules", "re");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            logmsg("module %s: %s", line, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
            logmsg("module %s: %s", line, strerror(errno));
        close(fd);
    }
    fclose(f);
}

static void mkdirs(const char *path)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *c = p + 1; *c; c++)
        if (*c == '/') {
            *c = 0;
            mkdir(p, 0755);
            *c = '/';
        }
    mkdir(p, 0755);
}

/* slurmvm.share=TAG:PATH[,TAG:PATH…]: host directories the VMM exports over virtio-fs, mounted at the
 * same path as on the host (the job's working directory, so results land on the host). */
static void mount_shares(void)
{
    const char *v = cmdline_value("slurmvm.share");
    if (!v) return;
    char list[4096];
    snprintf(list, sizeof list, "%s", v);
    for (char *save = NULL, *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        if (!colon || colon[1] != '/') {
            logmsg("slurmvm.share: '%s' is not TAG:/PATH", item);
            continue;
        }
        *colon = 0;
        mkdirs(colon + 1);
        if (mount(item, colon + 1, "virtiofs", MS_NODEV, NULL) != 0)
            logmsg("mount virtiofs %s on %s: %s", item, colon + 1, strerror(errno));
    }
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
}

static void init_system(void)
{
    do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
    do_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    do_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mkdir("/tmp", 01777);
    chmod("/tmp", 01777);
    read_cmdline();
    load_modules();
    const char *h = cmdline_value("slurmvm.hostname");
    if (h) sethostname(h, strlen(h));
    mount_shares();
    loopback_up();
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
}

/* The channel: slurmvm.channel=virtio:NAME (a virtio-serial port by name, the default), or a device. */
static int open_channel(void)
{
    const char *spec = cmdline_value("slurmvm.channel");
    if (!spec) spec = "virtio:org.slurm-vm.agent";
    char path[300];
    for (int tries = 0; tries < 1000; tries++) { /* up to 10 s for the device to appear */
        path[0] = 0;
        if (!strncmp(spec, "virtio:", 7)) {
            DIR *d = opendir("/sys/class/virtio-ports");
            struct dirent *e;
            while (d && (e = readdir(d))) {
                if (e->d_name[0] == '.') continue;
                char np[300], name[128] = {0};
                snprintf(np, sizeof np, "/sys/class/virtio-ports/%s/name", e->d_name);
                int fd = open(np, O_RDONLY | O_CLOEXEC);
                if (fd < 0) continue;
                ssize_t n = read(fd, name, sizeof name - 1);
                close(fd);
                if (n > 0) {
                    name[strcspn(name, "\n")] = 0;
                    if (!strcmp(name, spec + 7)) {
                        snprintf(path, sizeof path, "/dev/%s", e->d_name);
                        break;
                    }
                }
            }
            if (d) closedir(d);
        } else {
            snprintf(path, sizeof path, "%s", spec);
        }
        if (path[0]) {
            int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
            if (fd >= 0) {
                struct termios t;
                if (tcgetattr(fd, &t) == 0) {
                    cfmakeraw(&t);
                    tcsetattr(fd, TCSANOW, &t);
                }
                return fd;
            }
        }
        usleep(10000);
    }
    logmsg("no host channel (%s) appeared; is the VMM's agent device configured?", spec);
    return -1;
}

static uint64_t uptime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void send_ready(uint64_t nonce)
{
    struct utsname u;
    uname(&u);
    struct sysinfo si;
    sysinfo(&si);
    buf_t b = {0};
    b_u64(&b, nonce);
    b_u64(&b, uptime_ms());
    b_u32(&b, (uint32_t)sysconf(_SC_NPROCESSORS_ONLN));
    b_u64(&b, (uint64_t)si.totalram * si.mem_unit / 1024);
    b_str(&b, u.nodename);
    b_str(&b, u.release);
    b_str(&b, SVA_VERSION);
    if (!b.failed) send_frame(SVA_READY, 0, b.p, b.len);
    free(b.p);
}

/* Powers the guest off. Under the embedded VMM there is no ACPI to power off with; the command line
 * names its paravirtual exit port (slurmvm.exitport=0x501), where writing 0 ends the VM as a clean
 * power-off. Elsewhere (or if the port cannot be reached) the kernel powers off as usual. */
static void power_off(void)
{
    const char *p = cmdline_value("slurmvm.exitport");
    if (p) {
        unsigned long port = strtoul(p, NULL, 0);
        if (port > 0 && port < 0xfffc && ioperm(port, 4, 1) == 0) outl(0, (unsigned short)port);
    }
    reboot(RB_POWER_OFF);
}

static void shutdown_guest(uint32_t mode)
{
    kill_all(SIGTERM);
    usleep(100000);
    kill_all(SIGKILL);
    sync();
    if (!is_init) exit(0);
    if (mode == 1)
        reboot(RB_AUTOBOOT);
    else
        power_off();
    for (;;) pause();
}

/* ---------- the channel reader ---------- */

static uint8_t *rx;
static size_t rxlen, rxcap;
static int fd_mode = 0; /* serving a descriptor given by --fd (tests): its end is final */

/* The host disconnected. Nobody will read the output of running commands, so they are ended (as an
 * ssh session's are), and the agent waits for the next connection (a virtio port reconnects). */
static void host_lost(void)
{
    host_gone = 1;
    rxlen = 0;
    kill_all(SIGHUP);
    kill_all(SIGKILL);
    if (fd_mode) exit(0);
}

static void handle(uint8_t type, uint32_t id, const uint8_t *p, size_t len)
{
    session *s;
    switch (type) {
    case SVA_HELLO: {
        rd_t r = {p, len, 0, 0};
        uint64_t nonce = r_u64(&r);
        if (!r.bad) send_ready(nonce);
        break;
    }
    case SVA_EXEC: start_session(id, p, len); break;
    case SVA_STDIN:
        if ((s = find(id))) on_stdin(s, p, len);
        break;
    case SVA_RELAY:
        if ((s = find(id))) on_relay(s, p, len);
        break;
    case SVA_SIGNAL: {
        rd_t r = {p, len, 0, 0};
        uint32_t sig = r_u32(&r);
        if ((s = find(id)) && !r.bad && sig > 0 && sig < NSIG && !s->reaped) kill(-s->pid, (int)sig);
        break;
    }
    case SVA_RESIZE: {
        rd_t r = {p, len, 0, 0};
        uint32_t rows = r_u32(&r), cols = r_u32(&r);
        struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
        if ((s = find(id)) && s->tty && s->out >= 0 && !r.bad && rows > 0 && cols > 0 && rows <= 65535 && cols <= 65535)
            ioctl(s->out, TIOCSWINSZ, &ws);
        break;
    }
    case SVA_SHUTDOWN: {
        rd_t r = {p, len, 0, 0};
        uint32_t mode = r_u32(&r);
        shutdown_guest(r.bad ? 0 : mode);
        break;
    }
    default: break; /* unknown types are skipped, so newer hosts can talk to older agents */
    }
}

static void parse_rx(void)
{
    size_t off = 0;
    while (rxlen - off >= SVA_HEADER) {
        const uint8_t *h = rx + off;
        uint32_t len = (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 | (uint32_t)h[11] << 24;
        if ((h[0] | h[1] << 8) != SVA_MAGIC || len > SVA_MAX_PAYLOAD) {
            off++;
            continue;
        } /* resynchronise */
        if (rxlen - off < SVA_HEADER + len) break;
        uint32_t id = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
        handle(h[2], id, h + SVA_HEADER, len);
        off += SVA_HEADER + len;
    }
    memmove(rx, rx + off, rxlen - off);
    rxlen -= off;
}

static void read_channel(void)
{
    if (rxcap - rxlen < 65536) {
        size_t cap = rxcap ? rxcap * 2 : 131072;
        if (cap > 4 * (SVA_MAX_PAYLOAD + SVA_HEADER)) cap = 4 * (SVA_MAX_PAYLOAD + SVA_HEADER);
        uint8_t *n = cap > rxcap ? realloc(rx, cap) : rx;
        if (!n) {
            rxlen = 0;
            return;
        }
        rx = n;
        rxcap = cap;
    }
    ssize_t n = read(chan, rx + rxlen, rxcap - rxlen);
    if (n > 0) {
        rxlen += (size_t)n;
        parse_rx();
        return;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    host_lost();
}

static void pump_output(session *s, int *fd, uint8_t type)
{
    static uint8_t buf[65536];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) {
        send_frame(type, s->id, buf, (size_t)n);
        if (s->tty && s->reaped) s->quiet_ms = now_ms();
        return;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    close_fd(fd);
}

/* Slurm's PMI_process_mapping says which ranks share a Slurm node, but ranks of one node may sit in
 * different guests, which share no memory: MPICH would attach to another guest's shared memory and
 * fail. So the agent answers that one PMI-1 question itself, "not known", and MPICH falls back to
 * comparing hostnames, which is exact per guest. Everything else passes unchanged, in whole
 * messages (PMI-1 messages are lines of key=value words). What does not look like PMI-1 (a PMI-2
 * length prefix, a line beyond 64 KiB) turns the filter off for the rest of the session. */
#define PMI_LINE_MAX 65536

static int pmi_word(const uint8_t *m, size_t n, const char *word)
{
    size_t k = strlen(word);
    for (size_t i = 0; i + k <= n; i++)
        if ((i == 0 || m[i - 1] == ' ') && !memcmp(m + i, word, k) &&
            (i + k == n || m[i + k] == ' ' || m[i + k] == '\n'))
            return 1;
    return 0;
}

static void pmi_message(session *s, const uint8_t *m, size_t n)
{
    if (pmi_word(m, n, "cmd=get") && pmi_word(m, n, "key=PMI_process_mapping")) {
        static const char answer[] = "cmd=get_result rc=-1 msg=PMI_process_mapping_is_per_node_not_per_guest\n";
        on_relay(s, (const uint8_t *)answer, sizeof answer - 1);
        return;
    }
    send_frame(SVA_RELAY_OUT, s->id, m, n);
}

static void pmi_filter(session *s, const uint8_t *p, size_t n)
{
    buf_t *b = &s->pmiline;
    if (!b_append(b, p, n)) {
        s->pmi = 0; /* pass through what we have: the command's own PMI client reports trouble */
        send_frame(SVA_RELAY_OUT, s->id, b->p, b->len);
        send_frame(SVA_RELAY_OUT, s->id, p, n);
        b->len = 0;
        return;
    }
    size_t off = 0;
    while (off < b->len) {
        const uint8_t *m = b->p + off;
        size_t left = b->len - off;
        if (left >= 4 && memcmp(m, "cmd=", 4) != 0) {
            s->pmi = 0;
            break;
        }
        const uint8_t *nl = memchr(m, '\n', left);
        if (!nl) {
            if (left > PMI_LINE_MAX) s->pmi = 0;
            break;
        }
        pmi_message(s, m, (size_t)(nl - m) + 1);
        if (s->relay < 0) return; /* answering ended the relay */
        off += (size_t)(nl - m) + 1;
    }
    if (!s->pmi && off < b->len) {
        send_frame(SVA_RELAY_OUT, s->id, b->p + off, b->len - off);
        off = b->len;
    }
    b_drop(b, off);
}

static void pump_relay(session *s)
{
    static uint8_t buf[65536];
    ssize_t n = read(s->relay, buf, sizeof buf);
    if (n > 0) {
        if (s->pmi)
            pmi_filter(s, buf, (size_t)n);
        else
            send_frame(SVA_RELAY_OUT, s->id, buf, (size_t)n);
        return;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    end_relay(s, 1);
}

static void reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (session *s = sessions; s; s = s->next)
            if (s->pid == pid && !s->reaped) {
                s->reaped = 1;
                s->status = st;
                s->quiet_ms = now_ms();
                break;
            }
        /* other pids: orphans adopted by init; reaping them is all there is to do */
    }
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    is_init = getpid() == 1;
    if (argc == 3 && !strcmp(argv[1], "--fd")) {
        chan = atoi(argv[2]);
        fd_mode = 1;
    } else if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("slurm-vm-agent %s\n", SVA_VERSION);
        return 0;
    } else {
        if (is_init)
            init_system();
        else
            read_cmdline();
        /* slurmvm.bootonly=1: report the boot time on the console and power off (the benchmark's
         * baseline, and a smoke test of an image without any host side). */
        if (is_init && cmdline_value("slurmvm.bootonly")) {
            logmsg("boot-only: user space reached at %llu ms of guest uptime", (unsigned long long)uptime_ms());
            sync();
            power_off();
        }
        chan = open_channel();
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (chan >= 0) send_ready(0);

    for (;;) {
        struct pollfd pf[1 + 4 * 512];
        session *owner[1 + 4 * 512];
        int kind[1 + 4 * 512];
        int n = 0;
        pf[n].fd = sfd;
        pf[n].events = POLLIN;
        owner[n] = NULL;
        kind[n++] = 0;
        int chan_slot = -1;
        if (chan >= 0 && !host_gone) {
            chan_slot = n;
            pf[n].fd = chan;
            pf[n].events = POLLIN;
            owner[n] = NULL;
            kind[n++] = 0;
        }
        for (session *s = sessions; s && n < (int)(sizeof pf / sizeof pf[0]) - 4; s = s->next) {
            if (s->out >= 0) {
                pf[n].fd = s->out;
                pf[n].events = POLLIN;
                owner[n] = s;
                kind[n++] = 1;
            }
            if (s->err >= 0) {
                pf[n].fd = s->err;
                pf[n].events = POLLIN;
                owner[n] = s;
                kind[n++] = 2;
            }
            if (s->in >= 0 && s->inbuf.len > 0) {
                pf[n].fd = s->in;
                pf[n].events = POLLOUT;
                owner[n] = s;
                kind[n++] = 3;
            }
            if (s->relay >= 0) {
                pf[n].fd = s->relay;
                pf[n].events = (short)(POLLIN | (s->relaybuf.len > 0 ? POLLOUT : 0));
                owner[n] = s;
                kind[n++] = 4;
            }
        }
        /* While the host is away, look for it coming back every 100 ms; a terminal's last output is
         * waited for in steps too (maybe_finish). */
        int lingering = 0;
        for (session *s = sessions; s; s = s->next) lingering |= s->tty && s->reaped && s->out >= 0;
        int r = poll(pf, (nfds_t)n, host_gone ? 100 : lingering ? SVA_TTY_LINGER_MS / 4 : -1);
        if (r < 0 && errno != EINTR) {
            logmsg("poll: %s", strerror(errno));
            usleep(10000);
            continue;
        }
        if (host_gone && chan >= 0) {
            struct pollfd c = {chan, POLLIN, 0};
            if (poll(&c, 1, 0) >= 0 && !(c.revents & (POLLHUP | POLLERR))) host_gone = 0;
        }
        if (pf[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {}
            reap();
        }
        if (chan_slot >= 0 && pf[chan_slot].revents) {
            if (pf[chan_slot].revents & POLLIN)
                read_channel();
            else if (pf[chan_slot].revents & (POLLHUP | POLLERR))
                host_lost();
        }
        for (int i = 0; i < n; i++) {
            session *s = owner[i];
            if (!s || !pf[i].revents) continue; /* sessions are freed only below, so s is valid */
            if (kind[i] == 1 && s->out == pf[i].fd)
                pump_output(s, &s->out, SVA_STDOUT);
            else if (kind[i] == 2 && s->err == pf[i].fd)
                pump_output(s, &s->err, SVA_STDERR);
            else if (kind[i] == 3 && s->in == pf[i].fd)
                flush_stdin(s);
            else if (kind[i] == 4 && s->relay == pf[i].fd) {
                if (pf[i].revents & POLLOUT) flush_relay(s);
                if (s->relay == pf[i].fd && (pf[i].revents & (POLLIN | POLLHUP | POLLERR))) pump_relay(s);
            }
        }
        for (session *s = sessions, *next; s; s = next) {
            next = s->next;
            maybe_finish(s);
        }
    }
}
