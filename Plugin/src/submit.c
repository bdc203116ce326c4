/* Submission (sbatch, salloc, srun outside an allocation): check the options' syntax here, then let
 * slurm-vmd match the request against the image catalog. A request that cannot be met fails the
 * command before anything is queued, with the matcher's explanation. The accepted request (with the
 * chosen image's digest) travels to the job's nodes in the job-control environment as VM_REQUEST. */
#include "slurm-vm.h"

#include <ctype.h>
#include <stdio.h>
#include <slurm/slurm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Cheap local checks, so a typo is reported without a round trip; the daemon validates fully. */
static int check_syntax(char *err, size_t len)
{
    for (int i = 0; i < SVM_NOPTS; i++) {
        const char *v = svm_options[i].value;
        if (!v) continue;
        if (!*v) {
            snprintf(err, len, "--vm-%s is empty; give a value or leave the option out", svm_options[i].name);
            return -1;
        }
        for (const char *p = v; *p; p++)
            if ((unsigned char)*p < 0x20) {
                snprintf(err, len, "--vm-%s contains a control character", svm_options[i].name);
                return -1;
            }
        if (i == SVM_COUNT || i == SVM_VCPUS) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || end == v) {
                snprintf(err, len, "--vm-%s: '%s' is not a whole number", svm_options[i].name, v);
                return -1;
            }
            if (n < 1) {
                snprintf(err, len, "--vm-%s: %ld is out of range (at least 1)", svm_options[i].name, n);
                return -1;
            }
        }
    }
    return 0;
}

/* The CPU counts of the cluster's smallest and largest node, so the daemon can refuse what no node holds
 * and size --exclusive jobs (NULL: Slurm did not answer). */
static json_t *node_cpus(void)
{
    node_info_msg_t *msg = NULL;
    int lo = 0, hi = 0;
    if (slurm_load_node((time_t)0, &msg, SHOW_ALL) != 0 || !msg) return NULL;
    for (uint32_t i = 0; i < msg->record_count; i++) {
        int c = (int)msg->node_array[i].cpus;
        if (!msg->node_array[i].name || c <= 0) continue;
        if (!lo || c < lo) lo = c;
        if (c > hi) hi = c;
    }
    slurm_free_node_info_msg(msg);
    return hi ? json_pack("{s:i, s:i}", "smallest", lo, "largest", hi) : NULL;
}

/* The #SBATCH lines of a batch script, as sbatch reads them: after the #! line, up to the first line
 * that is neither blank nor a comment. */
static void read_directives(const char *path, json_t *out)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f) && n++ < 10000) {
        line[strcspn(line, "\r\n")] = 0;
        const char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (n == 1 || !*p) continue;
        if (*p != '#') break;
        if (!strncmp(p, "#SBATCH", 7) && (p[7] == ' ' || p[7] == '\t')) json_array_append_new(out, json_string(p + 8));
    }
    fclose(f);
}

/* sbatch's script: the first argument naming a regular file that starts with "#!" (sbatch refuses
 * any other script). None with --wrap or a script on standard input. */
static int is_script(const char *path)
{
    struct stat st;
    char head[2];
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fread(head, 1, 2, f) == 2 && head[0] == '#' && head[1] == '!';
    fclose(f);
    return ok;
}

/* The submitting command (Slurm 22.05's SPANK tells a plugin nothing of the job's size at submission):
 * {"tool": "sbatch", "arguments": [...], "directives": [...], "environment": {...}}. slurm-vmd reads
 * the job-size options out of it (Sources/Catalog/JobShape.swift). */
static json_t *command_json(void)
{
    json_t *args = json_array(), *dirs = json_array(), *env = json_object();
    char tool[64] = "";
    size_t cap = 1 << 20; /* argv beyond 1 MiB is not job sizes */
    char *buf = malloc(cap);
    ssize_t len = 0;
    FILE *f = buf ? fopen("/proc/self/cmdline", "r") : NULL;
    if (f) {
        len = (ssize_t)fread(buf, 1, cap - 1, f);
        buf[len] = 0;
        fclose(f);
    }
    for (ssize_t off = 0, i = 0; len > 0 && off < len; i++) {
        const char *a = buf + off;
        if (i == 0) {
            const char *slash = strrchr(a, '/');
            snprintf(tool, sizeof tool, "%s", slash ? slash + 1 : a);
        } else {
            json_array_append_new(args, json_string(a));
        }
        off += (ssize_t)strlen(a) + 1;
    }
    if (!strcmp(tool, "sbatch"))
        for (size_t i = 0; i < json_array_size(args); i++) {
            const char *a = json_string_value(json_array_get(args, i));
            if (a && a[0] != '-' && is_script(a)) {
                read_directives(a, dirs);
                break;
            }
        }
    free(buf);
    extern char **environ;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || (strncmp(*e, "SBATCH_", 7) && strncmp(*e, "SALLOC_", 7) && strncmp(*e, "SLURM_", 6))) continue;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)(eq - *e), *e);
        json_object_set_new(env, name, json_string(eq + 1));
    }
    return json_pack("{s:s, s:o, s:o, s:o}", "tool", tool, "arguments", args, "directives", dirs, "environment", env);
}

int svm_submit(spank_t sp)
{
    if (!svm_requested()) return 0;
    char err[1024];
    if (check_syntax(err, sizeof err) != 0) {
        slurm_error("%s: %s", SVM_PLUGIN, err);
        return -1;
    }
    /* srun inside an allocation starts a step of a job that was matched at its own submission. */
    if (spank_context() == S_CTX_LOCAL && getenv("SLURM_JOB_ID")) return 0;

    json_t *req = json_pack("{s:s, s:o, s:o}", "op", "match", "options", svm_options_json(), "command", command_json());
    json_t *cpus = node_cpus();
    if (cpus) json_object_set_new(req, "node_cpus", cpus);
    const char *account = getenv("SBATCH_ACCOUNT") ? getenv("SBATCH_ACCOUNT") : getenv("SLURM_ACCOUNT");
    if (account) json_object_set_new(req, "account", json_string(account));
    const char *partition = getenv("SBATCH_PARTITION") ? getenv("SBATCH_PARTITION") : getenv("SLURM_PARTITION");
    if (partition) json_object_set_new(req, "partition", json_string(partition));
    json_t *rep = svm_call(svm_config.submit_socket, req, svm_config.timeout, err, sizeof err);
    json_decref(req);
    if (!rep) {
        slurm_error("%s: cannot check the VM request: %s", SVM_PLUGIN, err);
        return -1;
    }
    int rc = -1;
    if (!json_is_true(json_object_get(rep, "ok"))) {
        const char *e = json_string_value(json_object_get(rep, "error"));
        slurm_error("%s: %s", SVM_PLUGIN, e ? e : "the VM request was refused");
        goto out;
    }
    json_t *accepted = json_object_get(rep, "request");
    char *text = accepted ? json_dumps(accepted, JSON_COMPACT) : NULL;
    if (!text) {
        slurm_error("%s: slurm-vmd's answer has no request", SVM_PLUGIN);
        goto out;
    }
    if (spank_job_control_setenv(sp, "VM_REQUEST", text, 1) != ESPANK_SUCCESS)
        slurm_error("%s: cannot attach the VM request to the job", SVM_PLUGIN);
    else
        rc = 0;
    free(text);
    const char *image = json_string_value(json_object_get(rep, "image"));
    if (rc == 0 && image && getenv("SLURM_VM_VERBOSE")) slurm_info("%s: guests will run image %s", SVM_PLUGIN, image);
out:
    json_decref(rep);
    return rc;
}
