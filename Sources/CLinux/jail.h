// Internal to CLinux: the jail clinux_spawn builds in a child (jail.c).
#ifndef CLINUX_JAIL_H
#define CLINUX_JAIL_H

typedef struct {
    const char *const *binds; // source, destination, source, destination, …
    const int *writable;      // NULL: all read-only
    int nbinds;
    const char *const *links; // path, target, path, target, …
    int nlinks;
} clinux_jail;

enum {
    JAIL_STEP_NAMESPACES = 100,
    JAIL_STEP_ROOT,
    JAIL_STEP_PIVOT,
    JAIL_STEP_BIND,
    JAIL_STEP_DEVICES,
    JAIL_STEP_LINK,
    JAIL_STEP_PROC,
    JAIL_STEP_DETACH,
};

/// Enters the jail: namespaces, the new root, the binds and links, /dev, /proc; the old root gone.
/// 0 or -errno, with the step (and bind or link index, else -1) that failed.
int clinux_jail_enter(const clinux_jail *j, int *step, int *index);

#endif
