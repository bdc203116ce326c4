/* One request to slurm-vmd: a JSON object on one line over its Unix socket, one line back. The daemon
 * identifies the caller by SO_PEERCRED, so nothing here claims an identity. */
#include "slurm-vm.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int wait_fd(int fd, short ev, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = ev};
        int r = poll(&p, 1, (int)left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -errno;
    }
}

json_t *svm_call(const char *path, json_t *req, int timeout_s, char *err, size_t errlen)
{
    int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return NULL;
    }
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        snprintf(err, errlen, "slurm-vmd is not reachable at %s (%s); is it running?", path, strerror(errno));
        close(fd);
        return NULL;
    }
    char *line = json_dumps(req, JSON_COMPACT);
    size_t n = strlen(line), off = 0;
    line[n] = '\0';
    json_t *rep = NULL;
    while (off <= n) {
        const char *buf = off < n ? line + off : "\n";
        size_t len = off < n ? n - off : 1;
        if (wait_fd(fd, POLLOUT, deadline) != 0) {
            snprintf(err, errlen, "timed out sending to slurm-vmd");
            goto out;
        }
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            snprintf(err, errlen, "cannot send to slurm-vmd: %s", strerror(errno));
            goto out;
        }
        off += off < n ? (size_t)w : 1;
    }
    size_t cap = 4096, got = 0;
    char *in = malloc(cap);
    for (;;) {
        if (got + 1 >= cap) {
            if (cap >= (1u << 24)) {
                snprintf(err, errlen, "slurm-vmd's answer is too long");
                free(in);
                goto out;
            }
            cap *= 2;
            in = realloc(in, cap);
        }
        int wr = wait_fd(fd, POLLIN, deadline);
        if (wr != 0) {
            snprintf(err, errlen, "slurm-vmd did not answer within %d s", timeout_s);
            free(in);
            goto out;
        }
        ssize_t r = recv(fd, in + got, cap - got - 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            snprintf(err, errlen, "slurm-vmd closed the connection without answering");
            free(in);
            goto out;
        }
        got += (size_t)r;
        in[got] = '\0';
        char *nl = memchr(in, '\n', got);
        if (nl) {
            *nl = '\0';
            json_error_t je;
            rep = json_loads(in, 0, &je);
            if (!rep || !json_is_object(rep)) {
                snprintf(err, errlen, "slurm-vmd sent an answer that is not a JSON object: %s", je.text);
                json_decref(rep);
                rep = NULL;
            }
            free(in);
            goto out;
        }
    }
out:
    free(line);
    close(fd);
    return rep;
}
