/* Fake libcuda.so.1 for GPU-free tests: the driver API subset libvgpu and its tests use, on host
 * memory, with simulated kernel time on a shared timeline (see fake_state.h).
 * Environment: FAKECUDA_STATE (shared file), FAKECUDA_DEVICES, FAKECUDA_TOTAL_MEM, FAKECUDA_SM_COUNT,
 * FAKECUDA_DRIVER_VERSION, FAKECUDA_CTX_BYTES (charged per process per device with a context),
 * FAKECUDA_KERNEL_NS (default kernel duration), FAKECUDA_GRAPH_NS, FAKECUDA_QUEUE_NS (launch queue
 * depth in time before a launch blocks), FAKECUDA_FAIL (fault injection), FAKECUDA_GPA_ALIAS=1
 * (cuGetProcAddress hands out internal aliases instead of the exported functions), FAKECUDA_SEED,
 * FAKECUDA_KERNEL_JITTER, FAKECUDA_CLOCK_DRIFT, FAKECUDA_CLOCK_EPOCH_MS (seeded cost noise, see
 * fake_state.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../include/cuda_abi.h"
#include "fake_state.h"

#define API __attribute__((visibility("default")))
#define FAULT(name)                                                                              \
    do {                                                                                         \
        int c_ = fk_fault(#name);                                                                \
        if (c_) return c_;                                                                       \
    } while (0)

static _Atomic int g_inited;
static uint64_t g_kernel_ns, g_graph_ns, g_queue_ns, g_ctx_bytes, g_pool_ns;
static pthread_once_t g_env_once = PTHREAD_ONCE_INIT;
static void load_env(void) {
    g_kernel_ns = fk_env_size("FAKECUDA_KERNEL_NS", 10000);
    g_graph_ns = fk_env_size("FAKECUDA_GRAPH_NS", g_kernel_ns);
    g_queue_ns = fk_env_size("FAKECUDA_QUEUE_NS", 20000000);
    g_ctx_bytes = fk_env_size("FAKECUDA_CTX_BYTES", 0);
    g_pool_ns = fk_env_size("FAKECUDA_POOL_NS", 0);
}
static void env(void) { pthread_once(&g_env_once, load_env); }

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* ---------------------------------------------------------------- init / device */
API CUresult cuInit(unsigned int flags) {
    FAULT(cuInit);
    (void)flags;
    env();
    fk_state();
    atomic_store(&g_inited, 1);
    return CUDA_SUCCESS;
}
#define NEED_INIT()                                                                              \
    do {                                                                                         \
        if (!atomic_load_explicit(&g_inited, memory_order_relaxed)) return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)

static int nvis(void);
API CUresult cuDriverGetVersion(int *v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = fk_state()->driver_version;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetCount(int *n) {
    NEED_INIT();
    FAULT(cuDeviceGetCount);
    *n = nvis();
    return CUDA_SUCCESS;
}
/* CUDA_VISIBLE_DEVICES: the process's ordinals are a selection and ordering of the simulated cards
 * (indexes or the fake UUIDs, up to the first entry that names no card, as CUDA does). CUdevice
 * values are ordinals; the shared state is indexed by card. */
static int g_vis[FK_MAX_DEV], g_nvis;
static pthread_once_t g_vis_once = PTHREAD_ONCE_INIT;
static void parse_visible(void) {
    int n = (int)fk_state()->ndev;
    const char *s = getenv("CUDA_VISIBLE_DEVICES");
    if (!s) {
        for (int i = 0; i < n; i++) g_vis[i] = i;
        g_nvis = n;
        return;
    }
    for (const char *p = s; *p && g_nvis < FK_MAX_DEV;) {
        size_t len = strcspn(p, ",");
        char tok[64];
        snprintf(tok, sizeof tok, "%.*s", (int)len, p);
        char *end;
        long v = !strncmp(tok, "GPU-face", 8) && len > 2 ? strtol(tok + len - 2, &end, 16) : strtol(tok, &end, 10);
        if (!len || *end || v < 0 || v >= n) break;
        g_vis[g_nvis++] = (int)v;
        p += len + (p[len] == ',');
    }
}
static int nvis(void) {
    pthread_once(&g_vis_once, parse_visible);
    return g_nvis;
}
static int bad_dev(CUdevice d) { return d < 0 || d >= nvis(); }
static int phys(CUdevice d) { return bad_dev(d) ? 0 : g_vis[d]; }
API CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    NEED_INIT();
    if (bad_dev(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "Fake GPU %d", d);
    return CUDA_SUCCESS;
}
static void fill_uuid(CUuuid *u, CUdevice d) {
    memset(u, 0, sizeof *u);
    u->bytes[0] = (char)0xfa;
    u->bytes[1] = (char)0xce;
    u->bytes[15] = (char)d;
}
API CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d) {
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    fill_uuid(u, phys(d));
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return cuDeviceGetUuid(u, d); }
API CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    switch (attr) {
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = (int)fk_state()->dev[phys(d)].sm_count; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
    default: *v = 0;
    }
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    NEED_INIT();
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = fk_state()->dev[phys(d)].total;
    return CUDA_SUCCESS;
}
API CUresult cuGetErrorName(CUresult e, const char **s) {
    switch (e) {
    case 0: *s = "CUDA_SUCCESS"; break;
    case 1: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case 2: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case 3: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case 201: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; break;
    default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return CUDA_SUCCESS;
}
API CUresult cuGetErrorString(CUresult e, const char **s) { return cuGetErrorName(e, s); }
API CUresult cuGetExportTable(const void **t, const CUuuid *id) {
    (void)t;
    (void)id;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---------------------------------------------------------------- contexts */
struct CUctx_st {
    int dev;
    int primary;
};
static __thread CUcontext t_cur;
static __thread CUcontext t_stack[16];
static __thread int t_depth;
static pthread_mutex_t g_ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static struct CUctx_st g_prim[FK_MAX_DEV];
static int g_prim_ref[FK_MAX_DEV];
static int g_ctx_count[FK_MAX_DEV]; /* live contexts of this process per device */

static CUresult ctx_charge(int dev, int delta) {
    /* the first context on a device costs FAKECUDA_CTX_BYTES of device memory, like a real driver */
    env();
    struct fk_state *S = fk_state();
    pthread_mutex_lock(&g_ctx_mu);
    int before = g_ctx_count[dev];
    int ord = dev;
    dev = phys(ord);
    g_ctx_count[ord] += delta; /* per ordinal; the memory is the card's */
    if (before == 0 && delta > 0 && g_ctx_bytes) {
        if (atomic_fetch_add(&S->dev[dev].used, g_ctx_bytes) + g_ctx_bytes > S->dev[dev].total) {
            atomic_fetch_sub(&S->dev[dev].used, g_ctx_bytes);
            g_ctx_count[ord] = 0;
            pthread_mutex_unlock(&g_ctx_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        atomic_fetch_add(&fk_me()->mem[dev], g_ctx_bytes);
    } else if (g_ctx_count[ord] == 0 && before > 0 && g_ctx_bytes) {
        atomic_fetch_sub(&S->dev[dev].used, g_ctx_bytes);
        atomic_fetch_sub(&fk_me()->mem[dev], g_ctx_bytes);
    }
    pthread_mutex_unlock(&g_ctx_mu);
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice d) {
    NEED_INIT();
    FAULT(cuDevicePrimaryCtxRetain);
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_ctx_mu);
    int first = g_prim_ref[d]++ == 0;
    g_prim[d].dev = d;
    g_prim[d].primary = 1;
    pthread_mutex_unlock(&g_ctx_mu);
    if (first) {
        CUresult r = ctx_charge(d, 1);
        if (r) {
            pthread_mutex_lock(&g_ctx_mu);
            g_prim_ref[d]--;
            pthread_mutex_unlock(&g_ctx_mu);
            return r;
        }
    }
    *pctx = &g_prim[d];
    return CUDA_SUCCESS;
}
static CUresult prim_drop(CUdevice d, int all) {
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_ctx_mu);
    int last = g_prim_ref[d] > 0 && (all || g_prim_ref[d] == 1);
    if (g_prim_ref[d] > 0) g_prim_ref[d] = all ? 0 : g_prim_ref[d] - 1;
    pthread_mutex_unlock(&g_ctx_mu);
    if (last) ctx_charge(d, -1);
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return prim_drop(d, 0); }
API CUresult cuDevicePrimaryCtxReset_v2(CUdevice d) { return prim_drop(d, 1); }
API CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return prim_drop(d, 0); }
API CUresult cuDevicePrimaryCtxReset(CUdevice d) { return prim_drop(d, 1); }

static CUresult ctx_new(CUcontext *pctx, CUdevice d) {
    NEED_INIT();
    if (bad_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    CUresult r = ctx_charge(d, 1);
    if (r) return r;
    CUcontext c = calloc(1, sizeof *c);
    c->dev = d;
    *pctx = c;
    t_cur = c;
    return CUDA_SUCCESS;
}
API CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice d) {
    FAULT(cuCtxCreate_v2);
    (void)flags;
    return ctx_new(pctx, d);
}
API CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *p, int n, unsigned int flags, CUdevice d) {
    FAULT(cuCtxCreate_v3);
    (void)p;
    (void)n;
    (void)flags;
    return ctx_new(pctx, d);
}
API CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *p, unsigned int flags, CUdevice d) {
    FAULT(cuCtxCreate_v4);
    (void)p;
    (void)flags;
    return ctx_new(pctx, d);
}
API CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice d) {
    (void)flags;
    return ctx_new(pctx, d);
}
API CUresult cuCtxDestroy_v2(CUcontext c);
API CUresult cuCtxDestroy(CUcontext c) { return cuCtxDestroy_v2(c); }
API CUresult cuCtxDestroy_v2(CUcontext c) {
    if (!c || c->primary) return CUDA_ERROR_INVALID_CONTEXT;
    ctx_charge(c->dev, -1);
    if (t_cur == c) t_cur = NULL;
    free(c);
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetCurrent(CUcontext *c) {
    *c = t_cur;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSetCurrent(CUcontext c) {
    t_cur = c;
    return CUDA_SUCCESS;
}
API CUresult cuCtxPushCurrent_v2(CUcontext c) {
    if (t_depth < 16) t_stack[t_depth++] = t_cur;
    t_cur = c;
    return CUDA_SUCCESS;
}
API CUresult cuCtxPopCurrent_v2(CUcontext *c) {
    if (c) *c = t_cur;
    t_cur = t_depth ? t_stack[--t_depth] : NULL;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetDevice(CUdevice *d) {
    FAULT(cuCtxGetDevice);
    if (!t_cur) return CUDA_ERROR_INVALID_CONTEXT;
    *d = t_cur->dev;
    return CUDA_SUCCESS;
}
static int cur_ord(void) { return t_cur ? t_cur->dev : 0; }
static int cur_dev(void) { return phys(cur_ord()); } /* the card */

/* ---------------------------------------------------------------- stream-ordered pools */
/* Per process, one default pool per device and any number made by cuMemPoolCreate (each on its own
 * device). Freed blocks stay reserved in the pool (device memory still in use) until a
 * synchronisation trims the pool down to max(used, release threshold). FAKECUDA_POOL_NS: how long a
 * pool allocation takes (before it looks at the pool), to open the window between two threads. */
struct CUmemPoolHandle_st {
    int dev;
    uint64_t reserved, reserved_high, used, threshold;
    struct CUmemPoolHandle_st *next; /* created pools */
};
static struct CUmemPoolHandle_st g_pool[FK_MAX_DEV], *g_created;
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct CUmemPoolHandle_st *pool_iter(int *i) { /* every pool: the defaults, then the created */
    if (*i < FK_MAX_DEV) return &g_pool[(*i)++];
    struct CUmemPoolHandle_st *p = g_created;
    for (int k = FK_MAX_DEV; p && k < *i; k++) p = p->next;
    (*i)++;
    return p;
}
static void pools_trim(uint64_t keep_min, CUmemoryPool only) {
    struct fk_state *S = fk_state();
    pthread_mutex_lock(&g_pool_mu);
    int it = 0;
    for (struct CUmemPoolHandle_st *p; (p = pool_iter(&it));) {
        if (only && only != p) continue;
        uint64_t keep = p->used > p->threshold ? p->used : p->threshold;
        if (only && keep < p->used + keep_min) keep = p->used > keep_min ? p->used : keep_min;
        if (p->reserved > keep) {
            uint64_t rel = p->reserved - keep;
            atomic_fetch_sub(&S->dev[p->dev].used, rel);
            atomic_fetch_sub(&fk_me()->mem[p->dev], rel);
            p->reserved = keep;
        }
    }
    pthread_mutex_unlock(&g_pool_mu);
}
API CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice d) {
    if (bad_dev(d) || !pool) return CUDA_ERROR_INVALID_VALUE;
    g_pool[d].dev = phys(d);
    *pool = &g_pool[d];
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice d) { return cuDeviceGetMemPool(pool, d); }
API CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    NEED_INIT();
    if (!pool || !props || props->location.type != CU_MEM_LOCATION_TYPE_DEVICE || bad_dev(props->location.id))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmemPoolHandle_st *p = calloc(1, sizeof *p);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    p->dev = phys(props->location.id);
    pthread_mutex_lock(&g_pool_mu);
    p->next = g_created;
    g_created = p;
    pthread_mutex_unlock(&g_pool_mu);
    *pool = p;
    return CUDA_SUCCESS;
}
API CUresult cuMemPoolDestroy(CUmemoryPool pool) { /* the fake keeps the handle: a destroyed pool is emptied */
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_mu);
    pool->threshold = 0;
    pthread_mutex_unlock(&g_pool_mu);
    pools_trim(0, pool);
    return CUDA_SUCCESS;
}
enum { ATTR_RELEASE_THRESHOLD = 4, ATTR_RESERVED_CURRENT = 5, ATTR_RESERVED_HIGH = 6, ATTR_USED_CURRENT = 7 };
API CUresult cuMemPoolGetAttribute(CUmemoryPool pool, int attr, void *value) {
    FAULT(cuMemPoolGetAttribute);
    if (!pool || !value) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_mu);
    uint64_t v = attr == ATTR_RELEASE_THRESHOLD ? pool->threshold
                 : attr == ATTR_RESERVED_CURRENT ? pool->reserved
                 : attr == ATTR_RESERVED_HIGH    ? pool->reserved_high
                 : attr == ATTR_USED_CURRENT     ? pool->used
                                                 : 0;
    pthread_mutex_unlock(&g_pool_mu);
    *(uint64_t *)value = v;
    return CUDA_SUCCESS;
}
API CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void *value) {
    if (!pool || !value || attr != ATTR_RELEASE_THRESHOLD) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_pool_mu);
    pool->threshold = *(uint64_t *)value;
    pthread_mutex_unlock(&g_pool_mu);
    return CUDA_SUCCESS;
}
API CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    pools_trim(keep, pool);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- execution */
static void sync_me(void) {
    pools_trim(0, NULL);
    struct fk_proc *p = fk_me();
    for (;;) {
        uint64_t now = fk_mono_ns(), le = atomic_load(&p->last_end);
        if (le <= now) return;
        /* the real driver spin-waits by default (CU_CTX_SCHED_AUTO): sleep to 200 us before the end,
         * then spin, so that a synchronise returns when the work is done, not a timer slack later */
        if (le - now > 200000) sleep_ns(le - now - 200000);
        else sched_yield();
    }
}
API CUresult cuCtxSynchronize(void) {
    NEED_INIT();
    sync_me();
    return CUDA_SUCCESS;
}
API CUresult cuStreamSynchronize(CUstream s) {
    (void)s;
    NEED_INIT();
    sync_me();
    return CUDA_SUCCESS;
}
API CUresult cuStreamSynchronize_ptsz(CUstream s) { return cuStreamSynchronize(s); }
/* a stream: its device and the context it was created in (the current one, as on a real driver) */
struct fk_stream {
    int ord;
    CUcontext ctx;
};
static int is_real_stream(CUstream s) { return (uintptr_t)s > 2; } /* not the null/legacy/per-thread one */
/* the device of a stream (the null, legacy and per-thread streams: the current one) */
static int stream_ord(CUstream s) { return is_real_stream(s) ? ((struct fk_stream *)(void *)s)->ord : cur_ord(); }
API CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
    (void)flags;
    struct fk_stream *st = calloc(1, sizeof *st);
    if (!st) return CUDA_ERROR_OUT_OF_MEMORY;
    st->ord = cur_ord();
    st->ctx = t_cur;
    *s = (CUstream)(void *)st;
    return CUDA_SUCCESS;
}
/* CUDA 12.8; absent from build/pre128 (an older driver) */
API CUresult cuStreamGetDevice(CUstream s, CUdevice *d) {
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    *d = stream_ord(s);
    return CUDA_SUCCESS;
}
/* CUDA 9.2: what an older driver offers to find a stream's device (through the context) */
API CUresult cuStreamGetCtx(CUstream s, CUcontext *c) {
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    *c = is_real_stream(s) ? ((struct fk_stream *)(void *)s)->ctx : t_cur;
    return *c ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}
API CUresult cuStreamGetCtx_ptsz(CUstream s, CUcontext *c) { return cuStreamGetCtx(s, c); }
API CUresult cuStreamDestroy_v2(CUstream s) {
    free(s);
    return CUDA_SUCCESS;
}

static void enqueue(int dev, uint64_t dur) {
    if (!dur) return;
    struct fk_state *S = fk_state();
    struct fk_proc *p = fk_me();
    uint64_t now = fk_mono_ns();
    for (;;) { /* a full launch queue blocks the launching thread, as on a real GPU */
        uint64_t le = atomic_load(&p->last_end);
        if (le <= now + g_queue_ns) break;
        sleep_ns(le - now - g_queue_ns);
        now = fk_mono_ns();
    }
    const struct fk_noise *N = fk_noise();
    if (N->jitter > 0) { /* this kernel's own variation */
        static _Atomic uint64_t draws;
        double f = 1.0 + N->jitter * fk_draw(0x6a177e5ULL + (uint64_t)(p - S->proc), atomic_fetch_add(&draws, 1));
        dur = (uint64_t)((double)dur * f) + 1;
    }
    struct fk_dev *D = &S->dev[dev];
    uint64_t bu = atomic_load(&D->busy_until), s, e;
    do {
        s = bu > now ? bu : now;
        /* the device's speed in the epoch the kernel starts in */
        double f = N->drift > 0 ? 1.0 + N->drift * fk_draw(0xd81f7ULL + (uint64_t)dev, s / N->epoch_ns) : 1.0;
        e = s + (uint64_t)((double)dur * f) + (N->drift > 0);
    } while (!atomic_compare_exchange_weak(&D->busy_until, &bu, e));
    uint64_t h = atomic_fetch_add(&p->head, 1);
    struct fk_iv *iv = &p->ring[h % FK_RING];
    atomic_store(&iv->dev, (uint32_t)dev);
    atomic_store(&iv->s, s);
    atomic_store(&iv->e, e);
    uint64_t le = atomic_load(&p->last_end);
    while (le < e && !atomic_compare_exchange_weak(&p->last_end, &le, e)) {
    }
    atomic_fetch_add(&p->busy_total[dev], e - s);
}

struct CUfunc_st {
    int busy; /* "busy*" kernels take their duration in ns from their first parameter */
    char name[64];
};
struct CUmod_st {
    struct CUfunc_st funcs[16];
    int n;
};
API CUresult cuModuleLoadData(CUmodule *m, const void *image) {
    NEED_INIT();
    (void)image;
    *m = calloc(1, sizeof **m);
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(CUmodule m) {
    free(m);
    return CUDA_SUCCESS;
}
API CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
    if (!m || !name) return CUDA_ERROR_INVALID_VALUE;
    if (m->n == 16) return CUDA_ERROR_OUT_OF_MEMORY;
    *f = &m->funcs[m->n++]; /* owned by the module */
    (*f)->busy = !strncmp(name, "busy", 4);
    snprintf((*f)->name, sizeof (*f)->name, "%s", name);
    return CUDA_SUCCESS;
}
static uint64_t kernel_ns(CUfunction f, void **params) {
    if (f && f->busy && params && params[0]) return *(const uint64_t *)params[0];
    return g_kernel_ns;
}
static CUresult launch(CUfunction f, void **params) {
    NEED_INIT();
    FAULT(cuLaunchKernel);
    env();
    enqueue(cur_dev(), kernel_ns(f, params));
    return CUDA_SUCCESS;
}
API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned smem, CUstream s, void **params, void **extra) {
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)smem, (void)s, (void)extra;
    return launch(f, params);
}
API CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                 unsigned bz, unsigned smem, CUstream s, void **params, void **extra) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, s, params, extra);
}
API CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
    (void)c, (void)extra;
    return launch(f, params);
}
API CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
    return cuLaunchKernelEx(c, f, params, extra);
}
API CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                       unsigned by, unsigned bz, unsigned smem, CUstream s, void **params) {
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)smem, (void)s;
    return launch(f, params);
}
API CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                            unsigned by, unsigned bz, unsigned smem, CUstream s, void **params) {
    return cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, smem, s, params);
}
/* the legacy launch API: no parameters here (cuParamSet* is not simulated), FAKECUDA_KERNEL_NS each */
API CUresult cuLaunch(CUfunction f) { return launch(f, NULL); }
API CUresult cuLaunchGrid(CUfunction f, int gw, int gh) {
    (void)gw, (void)gh;
    return launch(f, NULL);
}
API CUresult cuLaunchGridAsync(CUfunction f, int gw, int gh, CUstream s) {
    (void)gw, (void)gh, (void)s;
    return launch(f, NULL);
}
struct CUgraph_st {
    int dummy;
};
struct CUgraphExec_st {
    int dummy;
};
API CUresult cuGraphCreate(CUgraph *g, unsigned int flags) {
    (void)flags;
    *g = calloc(1, sizeof **g);
    return CUDA_SUCCESS;
}
API CUresult cuGraphDestroy(CUgraph g) {
    free(g);
    return CUDA_SUCCESS;
}
API CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
    (void)g, (void)flags;
    *e = calloc(1, sizeof **e);
    return CUDA_SUCCESS;
}
API CUresult cuGraphExecDestroy(CUgraphExec e) {
    free(e);
    return CUDA_SUCCESS;
}
API CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
    (void)e, (void)s;
    NEED_INIT();
    env();
    enqueue(cur_dev(), g_graph_ns);
    return CUDA_SUCCESS;
}
API CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) { return cuGraphLaunch(e, s); }

/* ---------------------------------------------------------------- memory */
#define HDR 256
static CUresult dev_alloc(CUdeviceptr *dptr, size_t size, int dev) {
    NEED_INIT();
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    if (!size) return CUDA_ERROR_INVALID_VALUE;
    struct fk_state *S = fk_state();
    if (atomic_fetch_add(&S->dev[dev].used, size) + size > S->dev[dev].total) {
        atomic_fetch_sub(&S->dev[dev].used, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    char *p = malloc(HDR + (size < 64 ? size : 64)); /* host memory; only the head is backed */
    if (!p) {
        atomic_fetch_sub(&S->dev[dev].used, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    ((uint64_t *)p)[0] = size;
    ((uint64_t *)p)[1] = (uint64_t)dev;
    ((uint64_t *)p)[2] = 0; /* not from a pool */
    atomic_fetch_add(&fk_me()->mem[dev], size);
    *dptr = (CUdeviceptr)(uintptr_t)(p + HDR);
    return CUDA_SUCCESS;
}
static CUresult dev_free(CUdeviceptr d) {
    if (!d) return CUDA_SUCCESS;
    char *p = (char *)(uintptr_t)d - HDR;
    uint64_t size = ((uint64_t *)p)[0];
    int dev = (int)((uint64_t *)p)[1];
    struct CUmemPoolHandle_st *pool = (struct CUmemPoolHandle_st *)(uintptr_t)((uint64_t *)p)[2];
    if (pool) { /* back to the pool's cache: still reserved device memory until a trim */
        pthread_mutex_lock(&g_pool_mu);
        pool->used -= size;
        pthread_mutex_unlock(&g_pool_mu);
        free(p);
        return CUDA_SUCCESS;
    }
    atomic_fetch_sub(&fk_state()->dev[dev].used, size);
    atomic_fetch_sub(&fk_me()->mem[dev], size);
    free(p);
    return CUDA_SUCCESS;
}
API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    FAULT(cuMemAlloc_v2);
    return dev_alloc(dptr, size, cur_dev());
}
API CUresult cuMemFree_v2(CUdeviceptr d) {
    FAULT(cuMemFree_v2);
    return dev_free(d);
}
API CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags) {
    FAULT(cuMemAllocManaged);
    (void)flags;
    return dev_alloc(dptr, size, cur_dev());
}
API CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int elem) {
    FAULT(cuMemAllocPitch_v2);
    (void)elem;
    if (!pitch) return CUDA_ERROR_INVALID_VALUE;
    *pitch = (w + 511) / 512 * 512;
    return dev_alloc(dptr, *pitch * h, cur_dev());
}
/* the v1 API's 32-bit device pointers: small handles to the 64-bit ones */
#define V1_MAX 4096
static CUdeviceptr g_v1[V1_MAX];
static pthread_mutex_t g_v1_mu = PTHREAD_MUTEX_INITIALIZER;
static CUresult v1_handle(CUresult r, CUdeviceptr p, CUdeviceptr_v1 *out) {
    if (r) return r;
    pthread_mutex_lock(&g_v1_mu);
    for (unsigned i = 0; i < V1_MAX; i++)
        if (!g_v1[i]) {
            g_v1[i] = p;
            pthread_mutex_unlock(&g_v1_mu);
            *out = (i + 1) * 256u;
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_v1_mu);
    dev_free(p);
    return CUDA_ERROR_OUT_OF_MEMORY;
}
API CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int size) {
    FAULT(cuMemAlloc);
    CUdeviceptr p = 0;
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = dev_alloc(&p, size, cur_dev());
    return v1_handle(r, p, dptr);
}
API CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pitch, unsigned int w, unsigned int h,
                             unsigned int elem) {
    size_t p64;
    CUdeviceptr p = 0;
    if (!dptr || !pitch) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = cuMemAllocPitch_v2(&p, &p64, w, h, elem);
    *pitch = (unsigned int)p64;
    return v1_handle(r, p, dptr);
}
API CUresult cuMemFree(CUdeviceptr_v1 d) {
    unsigned i = d / 256u;
    if (!d || d % 256u || i > V1_MAX) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_v1_mu);
    CUdeviceptr p = g_v1[i - 1];
    g_v1[i - 1] = 0;
    pthread_mutex_unlock(&g_v1_mu);
    return p ? dev_free(p) : CUDA_ERROR_INVALID_VALUE;
}
static CUresult pool_alloc(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s) {
    NEED_INIT();
    if (!dptr || !size) return CUDA_ERROR_INVALID_VALUE;
    if (g_pool_ns) sleep_ns(g_pool_ns);
    if (!pool) cuDeviceGetMemPool(&pool, stream_ord(s)); /* the current pool of the stream's device */
    struct fk_state *S = fk_state();
    int dev = pool->dev;
    pthread_mutex_lock(&g_pool_mu);
    uint64_t cached = pool->reserved - pool->used;
    if (cached < size) { /* grow the pool's reservation of device memory */
        uint64_t grow = size - cached;
        if (atomic_fetch_add(&S->dev[dev].used, grow) + grow > S->dev[dev].total) {
            atomic_fetch_sub(&S->dev[dev].used, grow);
            pthread_mutex_unlock(&g_pool_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        atomic_fetch_add(&fk_me()->mem[dev], grow);
        pool->reserved += grow;
        if (pool->reserved > pool->reserved_high) pool->reserved_high = pool->reserved;
    }
    pool->used += size;
    pthread_mutex_unlock(&g_pool_mu);
    char *p = malloc(HDR + (size < 64 ? size : 64));
    ((uint64_t *)p)[0] = size;
    ((uint64_t *)p)[1] = (uint64_t)dev;
    ((uint64_t *)p)[2] = (uint64_t)(uintptr_t)pool;
    *dptr = (CUdeviceptr)(uintptr_t)(p + HDR);
    return CUDA_SUCCESS;
}
API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream s) {
    FAULT(cuMemAllocAsync);
    return pool_alloc(dptr, size, NULL, s);
}
API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream s) { return cuMemAllocAsync(dptr, size, s); }
API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s) {
    FAULT(cuMemAllocFromPoolAsync);
    return pool_alloc(dptr, size, pool, s);
}
API CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s) {
    return cuMemAllocFromPoolAsync(dptr, size, pool, s);
}
API CUresult cuMemFreeAsync(CUdeviceptr d, CUstream s) {
    (void)s;
    return dev_free(d);
}
API CUresult cuMemFreeAsync_ptsz(CUdeviceptr d, CUstream s) { return cuMemFreeAsync(d, s); }
API CUresult cuMemGetInfo_v2(size_t *free, size_t *total) {
    NEED_INIT();
    struct fk_state *S = fk_state();
    int d = cur_dev();
    uint64_t u = atomic_load(&S->dev[d].used);
    *total = S->dev[d].total;
    *free = u >= *total ? 0 : *total - u;
    return CUDA_SUCCESS;
}
API CUresult cuMemGetInfo(unsigned int *free, unsigned int *total) {
    size_t f, t;
    CUresult r = cuMemGetInfo_v2(&f, &t);
    if (r) return r;
    *free = f > 0xffffffffu ? 0xffffffffu : (unsigned int)f;
    *total = t > 0xffffffffu ? 0xffffffffu : (unsigned int)t;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice d) {
    size_t b;
    CUresult r = cuDeviceTotalMem_v2(&b, d);
    if (!r) *bytes = b > 0xffffffffu ? 0xffffffffu : (unsigned int)b;
    return r;
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    memcpy((void *)(uintptr_t)dst, src, n < 64 ? n : 64);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    memcpy(dst, (const void *)(uintptr_t)src, n < 64 ? n : 64);
    return CUDA_SUCCESS;
}

/* VMM: physical handles carry their size; freed on release once unmapped */
struct vmm {
    uint64_t size;
    int dev;
    int maps;
    int refs; /* cuMemCreate's and every cuMemRetainAllocationHandle's, less the releases */
};
API CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                         unsigned long long flags) {
    FAULT(cuMemCreate);
    NEED_INIT();
    (void)flags;
    if (!h || !prop || !size) return CUDA_ERROR_INVALID_VALUE;
    int dev = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? prop->location.id : -1;
    if (dev >= 0) {
        if (bad_dev(dev)) return CUDA_ERROR_INVALID_DEVICE;
        dev = phys(dev);
        struct fk_state *S = fk_state();
        if (atomic_fetch_add(&S->dev[dev].used, size) + size > S->dev[dev].total) {
            atomic_fetch_sub(&S->dev[dev].used, size);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        atomic_fetch_add(&fk_me()->mem[dev], size);
    }
    struct vmm *v = calloc(1, sizeof *v);
    v->size = size;
    v->dev = dev;
    v->refs = 1;
    *h = (CUmemGenericAllocationHandle)(uintptr_t)v;
    return CUDA_SUCCESS;
}
static void vmm_maybe_free(struct vmm *v) {
    if (v->refs > 0 || v->maps) return;
    if (v->dev >= 0) {
        atomic_fetch_sub(&fk_state()->dev[v->dev].used, v->size);
        atomic_fetch_sub(&fk_me()->mem[v->dev], v->size);
    }
    free(v);
}
static pthread_mutex_t g_vmm_mu = PTHREAD_MUTEX_INITIALIZER;
API CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
    if (!h) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_vmm_mu);
    struct vmm *v = (struct vmm *)(uintptr_t)h;
    v->refs--;
    vmm_maybe_free(v);
    pthread_mutex_unlock(&g_vmm_mu);
    return CUDA_SUCCESS;
}
static struct {
    CUdeviceptr va;
    struct vmm *v;
} g_maps[256];
API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t off, CUmemGenericAllocationHandle h,
                      unsigned long long flags) {
    (void)size, (void)off, (void)flags;
    pthread_mutex_lock(&g_vmm_mu);
    for (int i = 0; i < 256; i++)
        if (!g_maps[i].va) {
            g_maps[i].va = ptr;
            g_maps[i].v = (struct vmm *)(uintptr_t)h;
            g_maps[i].v->maps++;
            pthread_mutex_unlock(&g_vmm_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_vmm_mu);
    return CUDA_ERROR_OUT_OF_MEMORY;
}
API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    (void)size;
    pthread_mutex_lock(&g_vmm_mu);
    for (int i = 0; i < 256; i++)
        if (g_maps[i].va == ptr) {
            struct vmm *v = g_maps[i].v;
            g_maps[i].va = 0;
            v->maps--;
            vmm_maybe_free(v);
            pthread_mutex_unlock(&g_vmm_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_vmm_mu);
    return CUDA_ERROR_INVALID_VALUE;
}
API CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *h, void *addr) {
    if (!h) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_vmm_mu);
    for (int i = 0; i < 256; i++)
        if (g_maps[i].va && g_maps[i].va == (CUdeviceptr)(uintptr_t)addr) {
            g_maps[i].v->refs++;
            *h = (CUmemGenericAllocationHandle)(uintptr_t)g_maps[i].v;
            pthread_mutex_unlock(&g_vmm_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_vmm_mu);
    return CUDA_ERROR_INVALID_VALUE;
}
static _Atomic uint64_t g_va = 0x100000000000ULL;
API CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                                 unsigned long long flags) {
    (void)align, (void)addr, (void)flags;
    *ptr = atomic_fetch_add(&g_va, (size + 0x1fffffULL) & ~0x1fffffULL);
    return CUDA_SUCCESS;
}
API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
    (void)ptr, (void)size;
    return CUDA_SUCCESS;
}

/* arrays: charged at element size x channels x extent */
struct CUarray_st {
    CUdeviceptr mem;
};
static size_t fmt_bytes(CUarray_format f) {
    return f == CU_AD_FORMAT_UNSIGNED_INT8 || f == CU_AD_FORMAT_SIGNED_INT8 ? 1
           : f == CU_AD_FORMAT_UNSIGNED_INT16 || f == CU_AD_FORMAT_SIGNED_INT16 || f == CU_AD_FORMAT_HALF ? 2
                                                                                                           : 4;
}
static CUresult arr_new(CUarray *a, size_t bytes) {
    struct CUarray_st *x = calloc(1, sizeof *x);
    CUresult r = dev_alloc(&x->mem, bytes ? bytes : 1, cur_dev());
    if (r) {
        free(x);
        return r;
    }
    *a = x;
    return CUDA_SUCCESS;
}
API CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *d) {
    FAULT(cuArrayCreate_v2);
    return arr_new(a, d->Width * (d->Height ? d->Height : 1) * fmt_bytes(d->Format) * d->NumChannels);
}
API CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    FAULT(cuArray3DCreate_v2);
    return arr_new(a, d->Width * (d->Height ? d->Height : 1) * (d->Depth ? d->Depth : 1) * fmt_bytes(d->Format) *
                          d->NumChannels);
}
API CUresult cuArrayDestroy(CUarray a) {
    if (!a) return CUDA_ERROR_INVALID_HANDLE;
    dev_free(a->mem);
    free(a);
    return CUDA_SUCCESS;
}
API CUresult cuArrayCreate(CUarray *a, const CUDA_ARRAY_DESCRIPTOR_v1 *d) {
    CUDA_ARRAY_DESCRIPTOR d2 = {d->Width, d->Height, d->Format, d->NumChannels};
    return cuArrayCreate_v2(a, &d2);
}
API CUresult cuArray3DCreate(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR_v1 *d) {
    CUDA_ARRAY3D_DESCRIPTOR d2 = {d->Width, d->Height, d->Depth, d->Format, d->NumChannels, d->Flags};
    return cuArray3DCreate_v2(a, &d2);
}
API CUresult cuMipmappedArrayCreate(CUmipmappedArray *m, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels) {
    (void)levels;
    CUarray a;
    CUresult r = cuArray3DCreate_v2(&a, d);
    if (!r) *m = (CUmipmappedArray)a;
    return r;
}
API CUresult cuMipmappedArrayDestroy(CUmipmappedArray m) { return cuArrayDestroy((CUarray)m); }

/* ---------------------------------------------------------------- cuGetProcAddress */
static CUresult alias_cuMemAlloc(CUdeviceptr_v1 *p, unsigned int n) { return cuMemAlloc(p, n); }
static CUresult alias_cuMemAlloc_v2(CUdeviceptr *p, size_t n) { return cuMemAlloc_v2(p, n); }
static CUresult alias_cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                     unsigned bz, unsigned smem, CUstream s, void **params, void **extra) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, s, params, extra);
}
static CUresult alias_cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                          unsigned by, unsigned bz, unsigned smem, CUstream s, void **params,
                                          void **extra) {
    return cuLaunchKernel_ptsz(f, gx, gy, gz, bx, by, bz, smem, s, params, extra);
}

API CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags);
API CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *st);
static const struct gpa {
    const char *base;
    int ver, ptsz;
    void *fn, *alias;
} g_gpa[] = {
#define E(base, ver, ptsz, fn) {#base, ver, ptsz, (void *)&fn, NULL},
#define A(base, ver, ptsz, fn) {#base, ver, ptsz, (void *)&fn, (void *)&alias_##fn},
    E(cuInit, 2000, 0, cuInit) E(cuDriverGetVersion, 2020, 0, cuDriverGetVersion)
    E(cuGetProcAddress, 11030, 0, cuGetProcAddress) E(cuGetProcAddress, 12000, 0, cuGetProcAddress_v2)
    E(cuDeviceGet, 2000, 0, cuDeviceGet) E(cuDeviceGetCount, 2000, 0, cuDeviceGetCount)
    E(cuDeviceGetName, 2000, 0, cuDeviceGetName) E(cuDeviceGetUuid, 9020, 0, cuDeviceGetUuid)
    E(cuDeviceGetUuid, 11040, 0, cuDeviceGetUuid_v2) E(cuDeviceGetAttribute, 2000, 0, cuDeviceGetAttribute)
    E(cuDeviceTotalMem, 3020, 0, cuDeviceTotalMem_v2)
    E(cuDevicePrimaryCtxRetain, 7000, 0, cuDevicePrimaryCtxRetain)
    E(cuDevicePrimaryCtxRelease, 7000, 0, cuDevicePrimaryCtxRelease)
    E(cuDevicePrimaryCtxRelease, 11000, 0, cuDevicePrimaryCtxRelease_v2)
    E(cuDevicePrimaryCtxReset, 7000, 0, cuDevicePrimaryCtxReset)
    E(cuDevicePrimaryCtxReset, 11000, 0, cuDevicePrimaryCtxReset_v2)
    E(cuCtxCreate, 3020, 0, cuCtxCreate_v2) E(cuCtxCreate, 11040, 0, cuCtxCreate_v3)
    E(cuCtxCreate, 12050, 0, cuCtxCreate_v4) E(cuCtxDestroy, 4000, 0, cuCtxDestroy_v2)
    E(cuCtxSetCurrent, 4000, 0, cuCtxSetCurrent) E(cuCtxGetCurrent, 4000, 0, cuCtxGetCurrent)
    E(cuCtxGetDevice, 2000, 0, cuCtxGetDevice) E(cuCtxSynchronize, 2000, 0, cuCtxSynchronize)
    A(cuMemAlloc, 2000, 0, cuMemAlloc) E(cuMemFree, 2000, 0, cuMemFree) E(cuMemAllocPitch, 2000, 0, cuMemAllocPitch)
    E(cuMemGetInfo, 2000, 0, cuMemGetInfo) E(cuDeviceTotalMem, 2000, 0, cuDeviceTotalMem)
    E(cuArrayCreate, 2000, 0, cuArrayCreate) E(cuArray3DCreate, 2000, 0, cuArray3DCreate)
    E(cuCtxCreate, 2000, 0, cuCtxCreate) E(cuCtxDestroy, 2000, 0, cuCtxDestroy)
    E(cuLaunch, 2000, 0, cuLaunch) E(cuLaunchGrid, 2000, 0, cuLaunchGrid)
    E(cuLaunchGridAsync, 2000, 0, cuLaunchGridAsync)
    A(cuMemAlloc, 3020, 0, cuMemAlloc_v2) E(cuMemFree, 3020, 0, cuMemFree_v2)
    E(cuMemAllocPitch, 3020, 0, cuMemAllocPitch_v2) E(cuMemAllocManaged, 6000, 0, cuMemAllocManaged)
    E(cuMemGetInfo, 3020, 0, cuMemGetInfo_v2) E(cuMemAllocAsync, 11020, 0, cuMemAllocAsync)
    E(cuMemAllocAsync, 11020, 1, cuMemAllocAsync_ptsz) E(cuMemFreeAsync, 11020, 0, cuMemFreeAsync)
    E(cuMemFreeAsync, 11020, 1, cuMemFreeAsync_ptsz)
    E(cuMemAllocFromPoolAsync, 11020, 0, cuMemAllocFromPoolAsync)
    E(cuMemAllocFromPoolAsync, 11020, 1, cuMemAllocFromPoolAsync_ptsz)
    E(cuDeviceGetMemPool, 11020, 0, cuDeviceGetMemPool) E(cuDeviceGetDefaultMemPool, 11020, 0, cuDeviceGetDefaultMemPool)
    E(cuMemPoolGetAttribute, 11020, 0, cuMemPoolGetAttribute) E(cuMemPoolSetAttribute, 11020, 0, cuMemPoolSetAttribute)
    E(cuMemPoolTrimTo, 11020, 0, cuMemPoolTrimTo)
    E(cuMemCreate, 10020, 0, cuMemCreate) E(cuMemRelease, 10020, 0, cuMemRelease) E(cuMemMap, 10020, 0, cuMemMap)
    E(cuMemUnmap, 10020, 0, cuMemUnmap) E(cuArrayCreate, 3020, 0, cuArrayCreate_v2)
    E(cuArray3DCreate, 3020, 0, cuArray3DCreate_v2) E(cuArrayDestroy, 2000, 0, cuArrayDestroy)
    E(cuMipmappedArrayCreate, 5000, 0, cuMipmappedArrayCreate) E(cuMipmappedArrayDestroy, 5000, 0, cuMipmappedArrayDestroy)
    E(cuCtxPushCurrent, 4000, 0, cuCtxPushCurrent_v2) E(cuCtxPopCurrent, 4000, 0, cuCtxPopCurrent_v2)
    E(cuMemPoolCreate, 11020, 0, cuMemPoolCreate) E(cuMemPoolDestroy, 11020, 0, cuMemPoolDestroy)
    E(cuMemRetainAllocationHandle, 11000, 0, cuMemRetainAllocationHandle)
    E(cuStreamGetDevice, 12080, 0, cuStreamGetDevice)
    E(cuStreamGetCtx, 9020, 0, cuStreamGetCtx) E(cuStreamGetCtx, 9020, 1, cuStreamGetCtx_ptsz)
    E(cuMemAddressReserve, 10020, 0, cuMemAddressReserve) E(cuMemAddressFree, 10020, 0, cuMemAddressFree)
    E(cuGraphCreate, 10000, 0, cuGraphCreate) E(cuGraphInstantiate, 11040, 0, cuGraphInstantiateWithFlags)
    E(cuModuleUnload, 2000, 0, cuModuleUnload)
    E(cuGetErrorName, 6000, 0, cuGetErrorName) E(cuGetErrorString, 6000, 0, cuGetErrorString)
    E(cuModuleLoadData, 2000, 0, cuModuleLoadData) E(cuModuleGetFunction, 2000, 0, cuModuleGetFunction)
    A(cuLaunchKernel, 4000, 0, cuLaunchKernel) A(cuLaunchKernel, 7000, 1, cuLaunchKernel_ptsz)
    E(cuLaunchKernelEx, 11060, 0, cuLaunchKernelEx) E(cuLaunchKernelEx, 11060, 1, cuLaunchKernelEx_ptsz)
    E(cuLaunchCooperativeKernel, 9000, 0, cuLaunchCooperativeKernel)
    E(cuLaunchCooperativeKernel, 9000, 1, cuLaunchCooperativeKernel_ptsz)
    E(cuGraphLaunch, 10000, 0, cuGraphLaunch) E(cuGraphLaunch, 10000, 1, cuGraphLaunch_ptsz)
    E(cuStreamSynchronize, 2000, 0, cuStreamSynchronize) E(cuStreamSynchronize, 7000, 1, cuStreamSynchronize_ptsz)
#undef E
#undef A
};

static CUresult gpa(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st) {
    if (!sym || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    if (ver > fk_state()->driver_version) return CUDA_ERROR_INVALID_VALUE;
    int want_pt = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0, found = 0;
    const struct gpa *best = NULL;
    for (size_t i = 0; i < sizeof g_gpa / sizeof *g_gpa; i++) {
        const struct gpa *g = &g_gpa[i];
        if (strcmp(g->base, sym)) continue;
        found = 1;
        if (g->ver > ver || (g->ptsz && !want_pt)) continue;
        if (!best || (g->ptsz == want_pt && best->ptsz != want_pt) ||
            (g->ptsz == best->ptsz && g->ver > best->ver))
            best = g;
    }
    if (!best) {
        if (st) *st = found ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_SUCCESS;
    }
    const char *alias = getenv("FAKECUDA_GPA_ALIAS");
    *pfn = (alias && *alias == '1' && best->alias) ? best->alias : best->fn;
    if (st) *st = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}
API CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags) {
    return gpa(sym, pfn, ver, flags, NULL);
}
API CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *st) {
    return gpa(sym, pfn, ver, flags, st);
}

/* test helper: kernel ns this process has executed on `dev` up to now */
API uint64_t fakecuda_busy_ns(int pid, int dev) {
    struct fk_state *S = fk_state();
    uint64_t now = fk_mono_ns();
    if (pid == (int)getpid()) pid = fk_pid();
    for (int i = 0; i < FK_MAX_PROC; i++) {
        struct fk_proc *p = &S->proc[i];
        if (atomic_load(&p->pid) != pid) continue;
        uint64_t total = atomic_load(&p->busy_total[dev]);
        uint64_t future = fk_busy_between(p, dev, now, UINT64_MAX); /* queued, not yet run */
        return total > future ? total - future : 0;
    }
    return 0;
}
