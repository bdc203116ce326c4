/* slurm-vm SPANK plugin: shared declarations. One file per SPANK context:
 *   plugin.c  the SPANK entry points, dispatch by context
 *   options.c the --vm-* option table, registration, environment fallbacks
 *   submit.c  sbatch/salloc/srun: local syntax checks, matching through slurm-vmd, VM_REQUEST
 *   prolog.c  job prolog/epilog on each node: prepare / tear down this node's guests
 *   task.c    slurmstepd task_init: redirect each task into a guest through the exec wrapper
 *   config.c  the plugstack.conf arguments (strict: unknown keys are errors)
 *   client.c  one JSON-lines request to slurm-vmd over its Unix socket
 */
#ifndef SLURM_VM_PLUGIN_H
#define SLURM_VM_PLUGIN_H

#include <jansson.h>
#include <slurm/spank.h>
#include <stddef.h>

#define SVM_PLUGIN "slurm-vm"

/* Each --vm-* option: its name without "--vm-", the value the user gave, and where it came from. */
enum { SVM_COUNT, SVM_VCPUS, SVM_MEM, SVM_OS, SVM_KERNEL, SVM_LIBS, SVM_IMAGE, SVM_REQUIREMENTS, SVM_RANK, SVM_NOPTS };
struct svm_option {
    const char *name; /* "count" */
    const char *env;  /* "SLURM_VM_COUNT": the fallback when the option is not given */
    const char *arginfo;
    const char *usage;
    char *value; /* NULL when not given */
};
extern struct svm_option svm_options[SVM_NOPTS];

struct svm_config {
    char *submit_socket; /* slurm-vmd serving matching (catalog role), seen from submit hosts */
    char *node_socket;   /* the node's slurm-vmd; %n expands to the node name (several slurmd per host) */
    char *exec_wrapper;  /* absolute path of `slurm-vm`, run as the task in place of argv[0] */
    int timeout;         /* seconds for matching; preparing guests uses prepare_timeout */
    int prepare_timeout;
};
extern struct svm_config svm_config;

int svm_config_parse(int ac, char **av, char *err, size_t errlen);
void svm_config_free(void);
/* The node socket for this node name (caller frees). */
char *svm_node_socket(const char *node);

int svm_register_options(spank_t sp);
/* After option parsing: fill unset options from their SLURM_VM_* variables. */
void svm_apply_env_fallbacks(void);
void svm_options_free(void);
/* 1 if any --vm-* option (or its environment fallback) is set. */
int svm_requested(void);
/* The given options as a JSON object {"count": "4", ...} (caller decrefs). */
json_t *svm_options_json(void);

/* Sends `req` as one line, reads one line back. Returns the reply (caller decrefs) or NULL with `err` set. */
json_t *svm_call(const char *socket_path, json_t *req, int timeout_s, char *err, size_t errlen);

int svm_submit(spank_t sp);
int svm_job_prolog(spank_t sp);
int svm_job_epilog(spank_t sp);
int svm_task_init(spank_t sp);

#endif
