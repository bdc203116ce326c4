/* The --vm-* options: the table (the same list as VMRequest.options in Sources/Catalog/VMRequest.swift;
 * a test checks the two against each other), their registration, their SLURM_VM_* environment
 * fallbacks, and the given values as JSON for slurm-vmd. */
#include "slurm-vm.h"

#include <stdlib.h>
#include <string.h>

struct svm_option svm_options[SVM_NOPTS] = {
    [SVM_COUNT] = {"count", "SLURM_VM_COUNT", "N", "Run the job's steps in N guests (VMs) over its nodes.", NULL},
    [SVM_VCPUS] = {"vcpus", "SLURM_VM_VCPUS", "N", "vCPUs per guest, each pinned to a dedicated core.", NULL},
    [SVM_MEM] = {"mem", "SLURM_VM_MEM", "SIZE", "Memory per guest, preallocated (e.g. 512M, 2G).", NULL},
    [SVM_OS] = {"os", "SLURM_VM_OS", "OS", "Guest OS: NAME, NAME:VERSION or NAME>=VERSION.", NULL},
    [SVM_KERNEL] = {"kernel", "SLURM_VM_KERNEL", "VERSION", "Guest kernel version: VERSION or >=VERSION.", NULL},
    [SVM_LIBS] = {"libs", "SLURM_VM_LIBS", "LIST", "Libraries the guest image must have, comma-separated.", NULL},
    [SVM_IMAGE] = {"image", "SLURM_VM_IMAGE", "NAME", "Guest image by NAME or NAME:VERSION.", NULL},
    [SVM_REQUIREMENTS] = {"requirements", "SLURM_VM_REQUIREMENTS", "EXPR", "ClassAd expression the image must satisfy.",
                          NULL},
    [SVM_RANK] = {"rank", "SLURM_VM_RANK", "EXPR", "ClassAd expression ranking matching images.", NULL},
};

/* Option callbacks may run twice in a step launched from a batch job: keep the last value. */
static int option_cb(int val, const char *optarg, int remote)
{
    (void)remote;
    if (val < 0 || val >= SVM_NOPTS) return -1;
    free(svm_options[val].value);
    svm_options[val].value = strdup(optarg ? optarg : "");
    return svm_options[val].value ? 0 : -1;
}

int svm_register_options(spank_t sp)
{
    for (int i = 0; i < SVM_NOPTS; i++) {
        char name[32];
        snprintf(name, sizeof name, "vm-%s", svm_options[i].name);
        struct spank_option o = {
            .name = name,
            .arginfo = (char *)svm_options[i].arginfo,
            .usage = (char *)svm_options[i].usage,
            .has_arg = 1,
            .val = i,
            .cb = option_cb,
        };
        if (spank_option_register(sp, &o) != ESPANK_SUCCESS) {
            slurm_error("%s: cannot register --%s", SVM_PLUGIN, name);
            return -1;
        }
    }
    return 0;
}

/* After option parsing: fill unset options from the environment fallbacks. */
void svm_apply_env_fallbacks(void)
{
    for (int i = 0; i < SVM_NOPTS; i++) {
        const char *e = getenv(svm_options[i].env);
        if (!svm_options[i].value && e && *e) svm_options[i].value = strdup(e);
    }
}

int svm_requested(void)
{
    for (int i = 0; i < SVM_NOPTS; i++)
        if (svm_options[i].value) return 1;
    return 0;
}

json_t *svm_options_json(void)
{
    json_t *o = json_object();
    for (int i = 0; i < SVM_NOPTS; i++)
        if (svm_options[i].value) json_object_set_new(o, svm_options[i].name, json_string(svm_options[i].value));
    return o;
}

void svm_options_free(void)
{
    for (int i = 0; i < SVM_NOPTS; i++) {
        free(svm_options[i].value);
        svm_options[i].value = NULL;
    }
}
