/* Submission (sbatch, salloc, srun outside an allocation): check the options' syntax here, then let
 * slurm-vmd match the request against the image catalog. A request that cannot be met fails the
 * command before anything is queued, with the matcher's explanation. The accepted request (with the
 * chosen image's digest) travels to the job's nodes in the job-control environment as VM_REQUEST. */
#include "slurm-vm.h"

#include <ctype.h>
#include <slurm/slurm.h>
#include <stdlib.h>
#include <string.h>

/* Cheap local checks, so a typo is reported without a round trip; the daemon validates fully. */
static int check_syntax(char *err, size_t len)
{
    for (int i = 0; i < SVM_NOPTS; i++) {
        const char *v = svm_options[i].value;
        if (!v)
            continue;
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

/* The largest node's CPU count, so the daemon can reject --vm-vcpus no node can hold (0: unknown). */
static int max_node_cpus(void)
{
    node_info_msg_t *msg = NULL;
    int best = 0;
    if (slurm_load_node((time_t)0, &msg, SHOW_ALL) != 0 || !msg)
        return 0;
    for (uint32_t i = 0; i < msg->record_count; i++)
        if (msg->node_array[i].name && (int)msg->node_array[i].cpus > best)
            best = msg->node_array[i].cpus;
    slurm_free_node_info_msg(msg);
    return best;
}

int svm_submit(spank_t sp)
{
    if (!svm_requested())
        return 0;
    char err[1024];
    if (check_syntax(err, sizeof err) != 0) {
        slurm_error("%s: %s", SVM_PLUGIN, err);
        return -1;
    }
    /* srun inside an allocation starts a step of a job that was matched at its own submission. */
    if (spank_context() == S_CTX_LOCAL && getenv("SLURM_JOB_ID"))
        return 0;

    json_t *req = json_pack("{s:s, s:o, s:i}", "op", "match", "options", svm_options_json(), "node_cpus_max", max_node_cpus());
    const char *account = getenv("SBATCH_ACCOUNT") ? getenv("SBATCH_ACCOUNT") : getenv("SLURM_ACCOUNT");
    if (account)
        json_object_set_new(req, "account", json_string(account));
    const char *partition = getenv("SBATCH_PARTITION") ? getenv("SBATCH_PARTITION") : getenv("SLURM_PARTITION");
    if (partition)
        json_object_set_new(req, "partition", json_string(partition));
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
    if (rc == 0 && image && getenv("SLURM_VM_VERBOSE"))
        slurm_info("%s: guests will run image %s", SVM_PLUGIN, image);
out:
    json_decref(rep);
    return rc;
}
