// The file system a jailed child sees (clinux_spawn's `jail`): built in the child, as root, between
// fork and exec. A tmpfs is mounted over /tmp and becomes the root by pivot_root, with the old root
// at /.old; each allowed path is bound from /.old at its own path (so the paths on the command line
// mean the same inside), then the old root is detached and the new one made read-only. Binding from
// /.old after the pivot means a path under /tmp is still found: the tmpfs covered /tmp only until it
// moved to /.
#define _GNU_SOURCE
#include "jail.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define OLD "/.old"

// mkdir -p of every directory above `path` (and `path` itself when `last`), mode 0755.
static int make_parents(const char *path, int last)
{
    char buf[PATH_MAX];
    if (strlen(path) >= sizeof buf) return -ENAMETOOLONG;
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (last && mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
    return 0;
}

// Binds OLD+source at destination; writable or read-only, never set-uid, devices only for a device
// node. `source` has no symbolic links (they would resolve against the new root).
static int bind_path(const char *source, const char *destination, int writable)
{
    char src[PATH_MAX];
    if (source[0] != '/' || destination[0] != '/' || snprintf(src, sizeof src, OLD "%s", source) >= (int)sizeof src)
        return -EINVAL;
    struct stat st;
    if (stat(src, &st) != 0) return -errno;
    int dir = S_ISDIR(st.st_mode);
    int e = make_parents(destination, dir);
    if (e < 0) return e;
    if (!dir) {
        int fd = open(destination, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return -errno;
        close(fd);
    }
    if (mount(src, destination, NULL, MS_BIND, NULL) != 0) return -errno;
    int device = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode);
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID;
    if (!device) flags |= MS_NODEV;
    // A device node stays writable (it is written through, not changed); nothing is run from a
    // writable path.
    if (!writable && !device) flags |= MS_RDONLY;
    if (writable && !device) flags |= MS_NOEXEC;
    if (mount(NULL, destination, NULL, flags, NULL) != 0) return -errno;
    return 0;
}

int clinux_jail_enter(const clinux_jail *j, int *step, int *index)
{
    *index = -1;
    *step = JAIL_STEP_NAMESPACES;
    if (unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC) != 0) return -errno;
    // Nothing mounted here travels back to the node, nor the node's later mounts in.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return -errno;
    *step = JAIL_STEP_ROOT;
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m,nr_inodes=4096") != 0)
        return -errno;
    if (mkdir("/tmp" OLD, 0700) != 0) return -errno;
    *step = JAIL_STEP_PIVOT;
    if (syscall(SYS_pivot_root, "/tmp", "/tmp" OLD) != 0) return -errno;
    if (chdir("/") != 0) return -errno;
    *step = JAIL_STEP_BIND;
    for (int i = 0; i < j->nbinds; i++) {
        *index = i;
        int e = bind_path(j->binds[2 * i], j->binds[2 * i + 1], j->writable ? j->writable[i] : 0);
        if (e < 0) return e;
    }
    *index = -1;
    *step = JAIL_STEP_DEVICES;
    int e = bind_path("/dev/null", "/dev/null", 1);
    if (e < 0) return e;
    if (symlink("/proc/self/fd", "/dev/fd") != 0 && errno != EEXIST) return -errno;
    *step = JAIL_STEP_LINK;
    for (int i = 0; i + 1 < j->nlinks * 2; i += 2) {
        *index = i / 2;
        if ((e = make_parents(j->links[i], 0)) < 0) return e;
        if (symlink(j->links[i + 1], j->links[i]) != 0) return -errno;
    }
    *index = -1;
    // Its own processes only (hidepid), and nothing of /proc but the processes (subset=pid).
    *step = JAIL_STEP_PROC;
    if (mkdir("/proc", 0555) != 0 && errno != EEXIST) return -errno;
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid") != 0)
        return -errno;
    *step = JAIL_STEP_DETACH;
    if (umount2(OLD, MNT_DETACH) != 0) return -errno;
    if (rmdir(OLD) != 0) return -errno;
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return -errno;
    return 0;
}
