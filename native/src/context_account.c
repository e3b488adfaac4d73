/* Context accounting: a CUDA context costs device memory the allocation hooks never see, so every
 * context is charged: the primary context of a device once however often it is retained, every
 * created context on its own. */
#define _GNU_SOURCE
#include <string.h>
#include <unistd.h>

#include "account.h"

static pthread_mutex_t g_prim_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_prim_ref[VGPU_MAX_DEV];
static uint64_t g_prim_charge[VGPU_MAX_DEV];
static int g_self_found; /* this process's NVML entry has been identified (process-local) */

void vgpu_ctx_atfork_child(void) {
    /* CUDA state does not survive fork: the child starts with nothing charged */
    pthread_mutex_init(&g_prim_mu, NULL);
    memset(g_prim_ref, 0, sizeof g_prim_ref);
    memset(g_prim_charge, 0, sizeof g_prim_charge);
    g_self_found = 0;
}

/* Bytes one context costs on `dev`: configured, else measured once through NVML and shared. */
static uint64_t ctx_known(int dev) { return atomic_load(&vgpu_region()->dev[dev].ctx_overhead); }

/* The processes NVML lists on a device. NVML reports PIDs of the host's namespace; in a container's
 * PID namespace the library's own PID is not among them, so the measurement identifies this process
 * by its host PID when /proc shows it (NSpid), else as the one process that appeared on the device
 * while this process created its first context (the list before vs after). */
#define SNAP_MAX 64
struct pidsnap {
    int ok;
    unsigned n;
    nvmlProcessInfo_t p[SNAP_MAX];
};
static void nvml_procs(int dev, struct pidsnap *s) {
    s->ok = 0;
    s->n = SNAP_MAX;
    nvmlDevice_t h = vgpu_nvml_device(dev);
    if (!h || !NVML_HELPER_FN(nvmlDeviceGetComputeRunningProcesses_v3)) return;
    s->ok = NVML_HELPER_FN(nvmlDeviceGetComputeRunningProcesses_v3)(h, &s->n, s->p) == NVML_SUCCESS;
    if (s->n > SNAP_MAX) s->n = SNAP_MAX;
}
static int snap_has(const struct pidsnap *s, unsigned pid) {
    for (unsigned i = 0; i < s->n; i++)
        if (s->p[i].pid == pid) return 1;
    return 0;
}

/* This process's entry in NVML's list of `dev` right after a context was created, or NULL.
 * `*ambiguous` is set when several processes appeared since `before`. Learns the host PID. */
static const nvmlProcessInfo_t *find_self(int dev, const struct pidsnap *before, struct pidsnap *after,
                                          int *ambiguous) {
    *ambiguous = 0;
    nvml_procs(dev, after);
    if (!after->ok) return NULL;
    unsigned self = (unsigned)vgpu_host_pid();
    const nvmlProcessInfo_t *me = NULL;
    unsigned fresh = 0;
    for (unsigned i = 0; i < after->n && !(me && me->pid == self); i++) {
        if (after->p[i].pid == self) me = &after->p[i];
        else if (before && before->ok && !snap_has(before, after->p[i].pid) && fresh++ == 0) me = &after->p[i];
    }
    if (me && me->pid != self && fresh != 1) {
        *ambiguous = 1;
        return NULL;
    }
    if (me && me->pid != self) { /* our host PID, learnt from the list */
        vgpu_slot_set_hostpid((int)me->pid);
        LOG_INFO("host PID %u (NVML's list before and after this process's first context)", me->pid);
    }
    g_self_found |= me != NULL;
    return me;
}

static uint64_t ctx_measure(int dev, const struct pidsnap *before) {
    struct pidsnap after;
    int ambiguous;
    const nvmlProcessInfo_t *me = find_self(dev, before, &after, &ambiguous);
    uint64_t known = ctx_known(dev);
    if (known || vgpu_cfg.ctx_overhead_set) return known;
    if (ambiguous)
        LOG_WARN("device %d: several processes appeared in NVML's list with this one's first context; the "
                 "context overhead is measured by the next process",
                 dev);
    if (!me) return 0; /* not on the device's list: this context costs no device memory */
    struct vgpu_region *R = vgpu_region();
    int slot = vgpu_slot_index();
    uint64_t mine = slot >= 0 ? atomic_load(&R->slot[slot].used[dev]) : 0;
    uint64_t m = me->usedGpuMemory > mine ? me->usedGpuMemory - mine : 0;
    uint64_t expect = 0;
    atomic_compare_exchange_strong(&R->dev[dev].ctx_overhead, &expect, m);
    LOG_INFO("device %d: measured context overhead %.1f MiB", dev, m / 1048576.0);
    return m;
}

/* charge before creating when the size is known (so a full slice refuses the context); snapshot
 * NVML's process list first when this process still has to find itself in it (to measure the
 * overhead, or to learn its host PID for the NVML filters and the limiter) */
static int ctx_pre(int ord, uint64_t *charged, struct pidsnap *before) {
    int dev = vgpu_dev_index(ord);
    *charged = 0;
    before->ok = 0;
    if (dev < 0 || dev >= VGPU_MAX_DEV) return 0;
    uint64_t k = ctx_known(dev);
    if (k) {
        if (vgpu_mem_reserve(dev, k, "context")) return -1;
        *charged = k;
    }
    if (!g_self_found && (!k || vgpu_host_pid() == (int)getpid()))
        nvml_procs(dev, before);
    return 0;
}
static uint64_t ctx_post(int ord, CUresult r, uint64_t charged, const struct pidsnap *before) {
    int dev = vgpu_dev_index(ord);
    if (dev < 0 || dev >= VGPU_MAX_DEV) return 0;
    if (r != CUDA_SUCCESS) {
        vgpu_mem_unreserve(dev, charged);
        return 0;
    }
    if (!charged) {
        charged = ctx_measure(dev, before);
        vgpu_mem_force(dev, charged);
    } else if (before->ok && !g_self_found) {
        struct pidsnap after;
        int ambiguous;
        find_self(dev, before, &after, &ambiguous);
    }
    return charged;
}

/* ---------------------------------------------------------------- primary contexts */
CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    vgpu_post_init();
    int first = 0;
    uint64_t ch = 0;
    struct pidsnap before;
    pthread_mutex_lock(&g_prim_mu);
    first = dev >= 0 && dev < VGPU_MAX_DEV && g_prim_ref[dev] == 0;
    pthread_mutex_unlock(&g_prim_mu);
    if (first && ctx_pre(dev, &ch, &before)) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuDevicePrimaryCtxRetain, pctx, dev);
    if (first) ch = ctx_post(dev, r, ch, &before);
    if (r == CUDA_SUCCESS && dev >= 0 && dev < VGPU_MAX_DEV) {
        pthread_mutex_lock(&g_prim_mu);
        if (g_prim_ref[dev]++ == 0) g_prim_charge[dev] = ch;
        else if (ch) { pthread_mutex_unlock(&g_prim_mu); vgpu_mem_unreserve(vgpu_dev_index(dev), ch); pthread_mutex_lock(&g_prim_mu); }
        pthread_mutex_unlock(&g_prim_mu);
    }
    return r;
}

/* after a successful release (all = 0) or reset (all = 1): uncharge once the last reference is gone */
static CUresult prim_drop(CUdevice dev, int all, CUresult r) {
    if (r != CUDA_SUCCESS || dev < 0 || dev >= VGPU_MAX_DEV) return r;
    uint64_t ch = 0;
    pthread_mutex_lock(&g_prim_mu);
    if (g_prim_ref[dev] > 0 && (all || --g_prim_ref[dev] == 0)) {
        g_prim_ref[dev] = 0;
        ch = g_prim_charge[dev];
        g_prim_charge[dev] = 0;
    }
    pthread_mutex_unlock(&g_prim_mu);
    vgpu_mem_unreserve(vgpu_dev_index(dev), ch);
    return r;
}
/* cuDevicePrimaryCtxRelease[_v2], cuDevicePrimaryCtxReset[_v2] */
#define WRAP_primary_release(name, base, params, args)                                           \
    CUresult name params { return prim_drop(dev, 0, CALL_REAL_ARGS(name, args)); }
#define WRAP_primary_reset(name, base, params, args)                                             \
    CUresult name params { return prim_drop(dev, 1, CALL_REAL_ARGS(name, args)); }

/* ---------------------------------------------------------------- created contexts */
static CUresult ctx_created(CUcontext *pctx, CUdevice dev, CUresult r, uint64_t ch, const struct pidsnap *before) {
    ch = ctx_post(dev, r, ch, before);
    if (r == CUDA_SUCCESS && pctx && *pctx) vgpu_obj_track((uint64_t)(uintptr_t)*pctx, ch, vgpu_dev_index(dev), K_CTX);
    return r;
}
/* cuCtxCreate_v2 / _v3 / _v4 */
#define WRAP_ctx_create(name, base, params, args)                                                \
    CUresult name params {                                                                       \
        vgpu_post_init();                                                                        \
        uint64_t ch;                                                                             \
        struct pidsnap before;                                                                   \
        if (ctx_pre(dev, &ch, &before)) return CUDA_ERROR_OUT_OF_MEMORY;                         \
        return ctx_created(pctx, dev, CALL_REAL_ARGS(name, args), ch, &before);                  \
    }
/* cuCtxDestroy_v2 is an obj_destroy row of hooks.def: alloc_account.c uncharges it with the other objects */

#include "hooks_gen.h"
