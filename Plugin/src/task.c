/* slurmstepd, in each task just before exec (as the user): the task's argv[0] becomes the exec
 * wrapper (`slurm-vm`), which runs the original command in one of the job's guests. The batch script
 * itself and the extern step stay on the host: the script's srun steps are what go into the guests. */
#include "slurm-vm.h"

#include <slurm/slurm.h>
#include <stdlib.h>
#include <string.h>

int svm_task_init(spank_t sp)
{
    if (!spank_remote(sp) || !svm_requested()) return 0;
    uint32_t step = 0;
    if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS) return 0;
    if (step == SLURM_BATCH_SCRIPT || step == SLURM_EXTERN_CONT) return 0;
    int argc = 0;
    char **argv = NULL;
    if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1) {
        slurm_error("%s: cannot read the task's command line", SVM_PLUGIN);
        return -1;
    }
    char node[256] = "";
    if (spank_getenv(sp, "SLURMD_NODENAME", node, sizeof node) != ESPANK_SUCCESS) {
        const char *n = getenv("SLURMD_NODENAME");
        snprintf(node, sizeof node, "%s", n ? n : "");
    }
    char *sock = svm_node_socket(node);
    if (spank_setenv(sp, "SLURM_VM_TASK_ARGV0", argv[0], 1) != ESPANK_SUCCESS ||
        spank_setenv(sp, "SLURM_VM_NODE_SOCKET", sock, 1) != ESPANK_SUCCESS) {
        slurm_error("%s: cannot set the task's environment", SVM_PLUGIN);
        free(sock);
        return -1;
    }
    free(sock);
    /* In place: slurmstepd execs argv[0] with the rest of argv unchanged. */
    argv[0] = strdup(svm_config.exec_wrapper);
    return 0;
}
