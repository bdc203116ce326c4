/* The SPANK entry points: each hands its context to the file that handles it (options.c, submit.c,
 * prolog.c, task.c). Options are registered in slurm_spank_init (a static spank_options table does not
 * reach sbatch in Slurm 22.05). */
#include "slurm-vm.h"

SPANK_PLUGIN(slurm - vm, 1);

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    char err[512];
    if (svm_config_parse(ac, av, err, sizeof err) != 0) {
        slurm_error("%s: plugstack.conf: %s", SVM_PLUGIN, err);
        return -1;
    }
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_LOCAL || ctx == S_CTX_ALLOCATOR || ctx == S_CTX_REMOTE) return svm_register_options(sp);
    return 0;
}

/* The prolog/epilog process does not call slurm_spank_init: parse the configuration there too. A bad
 * configuration is logged but never fails the prolog or epilog (that would drain the node); the job's
 * tasks report it instead. */
static int job_script_config(int ac, char **av)
{
    char err[512];
    if (svm_config_parse(ac, av, err, sizeof err) == 0) return 0;
    slurm_error("%s: plugstack.conf: %s", SVM_PLUGIN, err);
    return -1;
}

int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    return job_script_config(ac, av) == 0 ? svm_job_prolog(sp) : 0;
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    return job_script_config(ac, av) == 0 ? svm_job_epilog(sp) : 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    spank_context_t ctx = spank_context();
    if (ctx != S_CTX_LOCAL && ctx != S_CTX_ALLOCATOR) return 0;
    svm_apply_env_fallbacks();
    return svm_submit(sp);
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    return svm_task_init(sp);
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    (void)sp;
    (void)ac;
    (void)av;
    svm_options_free();
    svm_config_free();
    return 0;
}
