/* Job prolog and epilog, on every node of the job (PrologFlags=Alloc): ask this node's slurm-vmd to
 * boot the node's share of the guests (prolog) or to tear them down (epilog). Always returns 0: a
 * failing prolog drains the node, and a problem with one job's guests is not the node's fault — the
 * daemon records it and the job's tasks fail with the message instead. */
#include "slurm-vm.h"

#include <slurm/slurm.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The node's position in the job's node list, and the list's length. */
static int node_position(const char *nodelist, const char *node, int *index, int *count)
{
    hostlist_t hl = slurm_hostlist_create(nodelist);
    if (!hl) return -1;
    *count = slurm_hostlist_count(hl);
    *index = slurm_hostlist_find(hl, node);
    slurm_hostlist_destroy(hl);
    return *index < 0 ? -1 : 0;
}

/* The addresses of the job's nodes, in node-list order, as slurmctld knows them (NodeAddr, else the
 * name): the job network's tunnels run between them. */
static json_t *node_addresses(const char *nodelist)
{
    json_t *out = json_array();
    node_info_msg_t *msg = NULL;
    hostlist_t hl = slurm_hostlist_create(nodelist);
    if (!hl) return out;
    if (slurm_load_node((time_t)0, &msg, SHOW_ALL) != 0) msg = NULL;
    char *name;
    while ((name = slurm_hostlist_shift(hl))) {
        const char *addr = name;
        for (uint32_t i = 0; msg && i < msg->record_count; i++)
            if (msg->node_array[i].name && !strcmp(msg->node_array[i].name, name) && msg->node_array[i].node_addr)
                addr = msg->node_array[i].node_addr;
        json_array_append_new(out, json_string(addr));
        free(name);
    }
    if (msg) slurm_free_node_info_msg(msg);
    slurm_hostlist_destroy(hl);
    return out;
}

/* The job's CPU ids on this node and its working directory, from slurmctld. */
static int job_details(uint32_t job, const char *node, char *cpus, size_t cpulen, char **workdir)
{
    job_info_msg_t *msg = NULL;
    if (slurm_load_job(&msg, job, SHOW_DETAIL) != 0 || !msg || msg->record_count < 1) return -1;
    slurm_job_info_t *j = &msg->job_array[0];
    int rc = slurm_job_cpus_allocated_str_on_node(cpus, cpulen, j->job_resrcs, node);
    if (j->work_dir) *workdir = strdup(j->work_dir);
    slurm_free_job_info_msg(msg);
    return rc;
}

int svm_job_prolog(spank_t sp)
{
    const char *text = getenv("SPANK_VM_REQUEST");
    if (!text) return 0; /* not a VM job */
    uint32_t job = 0, uid = 0, gid = 0;
    spank_get_item(sp, S_JOB_ID, &job);
    spank_get_item(sp, S_JOB_UID, &uid);
    spank_get_item(sp, S_JOB_GID, &gid);
    const char *node = getenv("SLURMD_NODENAME");
    const char *nodelist = getenv("SLURM_NODELIST") ? getenv("SLURM_NODELIST") : getenv("SLURM_JOB_NODELIST");
    int index = 0, count = 1;
    char cpus[1024] = "";
    char *workdir = NULL;
    if (!node || !nodelist || node_position(nodelist, node, &index, &count) != 0) {
        slurm_error("%s: job %u: cannot place node %s in node list %s", SVM_PLUGIN, job, node ? node : "?",
                    nodelist ? nodelist : "?");
        return 0;
    }
    if (job_details(job, node, cpus, sizeof cpus, &workdir) != 0 || !cpus[0]) {
        slurm_error("%s: job %u: cannot read the job's CPUs on %s from slurmctld", SVM_PLUGIN, job, node);
        free(workdir);
        return 0;
    }
    json_error_t je;
    json_t *accepted = json_loads(text, 0, &je);
    if (!accepted) {
        slurm_error("%s: job %u: VM_REQUEST is not JSON: %s", SVM_PLUGIN, job, je.text);
        free(workdir);
        return 0;
    }
    json_t *req = json_pack("{s:s, s:{s:I, s:I, s:I, s:o, s:s, s:i, s:i, s:s}}", "op", "prepare", "prepare", "job",
                            (json_int_t)job, "uid", (json_int_t)uid, "gid", (json_int_t)gid, "request", accepted,
                            "node", node, "nodeIndex", index, "nodeCount", count, "cpus", cpus);
    if (workdir) json_object_set_new(json_object_get(req, "prepare"), "workdir", json_string(workdir));
    json_object_set_new(json_object_get(req, "prepare"), "nodeAddresses", node_addresses(nodelist));
    free(workdir);
    char *sock = svm_node_socket(node), err[1024];
    json_t *rep = svm_call(sock, req, svm_config.prepare_timeout, err, sizeof err);
    json_decref(req);
    if (!rep)
        slurm_error("%s: job %u: slurm-vmd at %s: %s (the job's tasks will fail)", SVM_PLUGIN, job, sock, err);
    else if (!json_is_true(json_object_get(rep, "ok")))
        slurm_error("%s: job %u: guests not prepared: %s", SVM_PLUGIN, job,
                    json_string_value(json_object_get(rep, "error")) ? json_string_value(json_object_get(rep, "error"))
                                                                     : "?");
    json_decref(rep);
    free(sock);
    return 0;
}

int svm_job_epilog(spank_t sp)
{
    if (!getenv("SPANK_VM_REQUEST")) return 0;
    uint32_t job = 0;
    spank_get_item(sp, S_JOB_ID, &job);
    const char *node = getenv("SLURMD_NODENAME");
    char *sock = svm_node_socket(node), err[1024];
    json_t *req = json_pack("{s:s, s:I}", "op", "teardown", "job", (json_int_t)job);
    /* slurm-vmd may be restarting: retry for a while (its reaper catches what we miss). */
    json_t *rep = NULL;
    for (int attempt = 0; attempt < 10 && !rep; attempt++) {
        if (attempt) sleep(1);
        rep = svm_call(sock, req, 60, err, sizeof err);
    }
    json_decref(req);
    if (!rep)
        slurm_error("%s: job %u: cannot tear down guests: %s (slurm-vmd removes them when it sees the job has ended)",
                    SVM_PLUGIN, job, err);
    json_decref(rep);
    free(sock);
    return 0;
}
