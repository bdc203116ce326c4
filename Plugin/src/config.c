/* The plugin's arguments on its plugstack.conf line, KEY=VALUE each. Unknown keys are errors, so a typo
 * never silently falls back to a default:
 *   submit_socket=PATH    slurm-vmd with the catalog role (matching at submission)
 *   node_socket=PATH      this node's slurm-vmd; %n is replaced by the node name (several slurmd per host)
 *   exec_wrapper=PATH     the slurm-vm binary, run in place of each task's argv[0]
 *   timeout=SECONDS       matching at submission (default 30)
 *   prepare_timeout=SECS  the prolog's wait for the guests (default 300)
 */
#include "slurm-vm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct svm_config svm_config;

static int parse_seconds(const char *key, const char *v, int *out, char *err, size_t len)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*v == '\0' || *end || n < 1 || n > 86400) {
        snprintf(err, len, "%s=%s: expected a number of seconds (1 to 86400)", key, v);
        return -1;
    }
    *out = (int)n;
    return 0;
}

static int set_path(char **slot, const char *key, const char *v, char *err, size_t len)
{
    if (v[0] != '/') {
        snprintf(err, len, "%s=%s: expected an absolute path", key, v);
        return -1;
    }
    free(*slot);
    *slot = strdup(v);
    return 0;
}

int svm_config_parse(int ac, char **av, char *err, size_t len)
{
    svm_config_free();
    svm_config.timeout = 30;
    svm_config.prepare_timeout = 300;
    for (int i = 0; i < ac; i++) {
        const char *eq = strchr(av[i], '=');
        if (!eq) {
            snprintf(err, len, "'%s' is not KEY=VALUE", av[i]);
            return -1;
        }
        size_t klen = (size_t)(eq - av[i]);
        const char *v = eq + 1;
        char key[64];
        if (klen >= sizeof key) klen = sizeof key - 1;
        memcpy(key, av[i], klen);
        key[klen] = '\0';
        int rc;
        if (!strcmp(key, "submit_socket"))
            rc = set_path(&svm_config.submit_socket, key, v, err, len);
        else if (!strcmp(key, "node_socket"))
            rc = set_path(&svm_config.node_socket, key, v, err, len);
        else if (!strcmp(key, "exec_wrapper"))
            rc = set_path(&svm_config.exec_wrapper, key, v, err, len);
        else if (!strcmp(key, "timeout"))
            rc = parse_seconds(key, v, &svm_config.timeout, err, len);
        else if (!strcmp(key, "prepare_timeout"))
            rc = parse_seconds(key, v, &svm_config.prepare_timeout, err, len);
        else {
            snprintf(err, len,
                     "unknown key '%s' (known: submit_socket, node_socket, exec_wrapper, timeout, prepare_timeout)",
                     key);
            rc = -1;
        }
        if (rc != 0) return -1;
    }
    if (!svm_config.submit_socket) svm_config.submit_socket = strdup("/run/slurm-vm/slurm-vmd.sock");
    if (!svm_config.node_socket) svm_config.node_socket = strdup(svm_config.submit_socket);
    if (!svm_config.exec_wrapper) svm_config.exec_wrapper = strdup("/usr/local/bin/slurm-vm");
    return 0;
}

void svm_config_free(void)
{
    free(svm_config.submit_socket);
    free(svm_config.node_socket);
    free(svm_config.exec_wrapper);
    memset(&svm_config, 0, sizeof svm_config);
}

char *svm_node_socket(const char *node)
{
    const char *t = svm_config.node_socket;
    size_t n = strlen(t) + 1, nl = node ? strlen(node) : 0;
    for (const char *p = t; (p = strstr(p, "%n")); p += 2) n += nl;
    char *out = malloc(n), *o = out;
    for (const char *p = t; *p;) {
        if (p[0] == '%' && p[1] == 'n') {
            if (node) {
                memcpy(o, node, nl);
                o += nl;
            }
            p += 2;
        } else
            *o++ = *p++;
    }
    *o = '\0';
    return out;
}
