/* Memory hooks: reserve in the shared region, call the driver, commit or roll back. */
#define _GNU_SOURCE
#include <string.h>

#include "ptrmap.h"

/* ---------------------------------------------------------------- tracked allocations */
enum { K_LINEAR = 1, K_ASYNC, K_MANAGED, K_PITCH, K_VMM, K_ARRAY, K_MIPMAP, K_CTX, K_POOLED };
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ptrmap m_ptr, m_handle, m_va, m_obj;

static void track(struct ptrmap *m, uint64_t key, uint64_t size, int dev, int kind) {
    struct ment e = {.key = key, .size = size, .dev = dev, .kind = (uint16_t)kind};
    pthread_mutex_lock(&g_mu);
    int r = ptrmap_put(m, &e);
    pthread_mutex_unlock(&g_mu);
    if (r) LOG_ERR("out of host memory tracking an allocation; it stays charged until the process exits");
}

static int untrack(struct ptrmap *m, uint64_t key, struct ment *out) {
    pthread_mutex_lock(&g_mu);
    int r = ptrmap_take(m, key, out);
    pthread_mutex_unlock(&g_mu);
    return r;
}

void vgpu_mem_atfork_prepare(void) { pthread_mutex_lock(&g_mu); }
void vgpu_mem_atfork_parent(void) { pthread_mutex_unlock(&g_mu); }
static int g_prim_ref[VGPU_MAX_DEV];
static uint64_t g_prim_charge[VGPU_MAX_DEV];

/* Stream-ordered pools: what a pool holds is device memory whether or not it is handed out, so the
 * charge of a pool is its RESERVED_MEM_CURRENT, re-sampled after each pool operation, on the OOM
 * path, on memory queries and every 100 ms by the watcher (a pool shrinks at synchronisation). */
#define MAX_POOLS 64
enum { POOL_ATTR_RESERVED_CURRENT = 5, POOL_ATTR_USED_CURRENT = 7 };
static struct pooltrack {
    CUmemoryPool pool;
    int dev;
    uint64_t charged;
} g_pools[MAX_POOLS];
static int g_npools;
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t pool_attr(CUmemoryPool pool, int attr, int *ok) {
    cuuint64_t v = 0;
    *ok = HELPER(cuMemPoolGetAttribute) && HELPER(cuMemPoolGetAttribute)(pool, attr, &v) == CUDA_SUCCESS;
    return *ok ? v : 0;
}

/* brings the charge of pool i to its current reservation; caller holds g_pool_mu */
static void pool_settle_locked(int i) {
    int ok;
    uint64_t cur = pool_attr(g_pools[i].pool, POOL_ATTR_RESERVED_CURRENT, &ok); /* destroyed pool: 0 */
    uint64_t was = g_pools[i].charged;
    g_pools[i].charged = cur;
    if (cur > was) vgpu_mem_force(g_pools[i].dev, cur - was);
    else if (cur < was) vgpu_mem_unreserve(g_pools[i].dev, was - cur);
}

static int pool_index(CUmemoryPool pool, int dev) {
    for (int i = 0; i < g_npools; i++)
        if (g_pools[i].pool == pool) return i;
    if (g_npools == MAX_POOLS) return -1;
    g_pools[g_npools] = (struct pooltrack){pool, dev, 0};
    return g_npools++;
}

int vgpu_pools_resample(void) {
    pthread_mutex_lock(&g_pool_mu);
    int n = g_npools;
    for (int i = 0; i < n; i++) pool_settle_locked(i);
    pthread_mutex_unlock(&g_pool_mu);
    return n;
}

void vgpu_mem_atfork_child(void) {
    pthread_mutex_init(&g_pool_mu, NULL);
    memset(g_pools, 0, sizeof g_pools);
    g_npools = 0;
    /* CUDA state does not survive fork: the child starts with nothing charged */
    pthread_mutex_init(&g_mu, NULL);
    struct ptrmap *all[] = {&m_ptr, &m_handle, &m_va, &m_obj};
    for (size_t i = 0; i < 4; i++) ptrmap_clear(all[i]);
    memset(g_prim_ref, 0, sizeof g_prim_ref);
    memset(g_prim_charge, 0, sizeof g_prim_charge);
}

int vgpu_current_device(void) {
    CUdevice d = 0;
    if (vgpu_ndev == 1) return 0;
    if (HELPER(cuCtxGetDevice) && HELPER(cuCtxGetDevice)(&d) == CUDA_SUCCESS && d >= 0 && d < VGPU_MAX_DEV)
        return d;
    return 0;
}

/* ---------------------------------------------------------------- linear family */
static CUresult alloc_common(CUdeviceptr *dptr, size_t size, int kind, const char *what, CUresult (*call)(void *),
                             void *ctx) {
    int dev = vgpu_current_device();
    if (vgpu_mem_reserve(dev, size, what) && (!vgpu_pools_resample() || vgpu_mem_reserve(dev, size, what)))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = call(ctx);
    if (r != CUDA_SUCCESS || !dptr || !*dptr) {
        vgpu_mem_unreserve(dev, size);
        return r;
    }
    track(&m_ptr, *dptr, size, dev, kind);
    return r;
}

/* Pooled allocation: admit the part the pool cannot serve from its cache, call, then charge the
 * pool's actual growth. Falls back to per-allocation charging without the pool attribute API. */
static CUresult alloc_pooled(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, const char *what,
                             CUresult (*call)(void *), void *ctx) {
    int dev = vgpu_current_device();
    if (!pool && HELPER(cuDeviceGetMemPool) && HELPER(cuDeviceGetMemPool)(&pool, dev) != CUDA_SUCCESS) pool = NULL;
    int ok1, ok2;
    uint64_t reserved = pool ? pool_attr(pool, POOL_ATTR_RESERVED_CURRENT, &ok1) : 0;
    uint64_t inuse = pool ? pool_attr(pool, POOL_ATTR_USED_CURRENT, &ok2) : 0;
    if (!pool || !ok1 || !ok2) return alloc_common(dptr, size, K_ASYNC, what, call, ctx);
    pthread_mutex_lock(&g_pool_mu);
    int i = pool_index(pool, dev);
    if (i >= 0) pool_settle_locked(i); /* a pool seen for the first time may already hold memory */
    pthread_mutex_unlock(&g_pool_mu);
    if (i < 0) return alloc_common(dptr, size, K_ASYNC, what, call, ctx);
    uint64_t cached = reserved > inuse ? reserved - inuse : 0;
    uint64_t need = size > cached ? size - cached : 0;
    if (need && vgpu_mem_reserve(dev, need, what) && (!vgpu_pools_resample() || vgpu_mem_reserve(dev, need, what)))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = call(ctx);
    pthread_mutex_lock(&g_pool_mu);
    pool_settle_locked(i); /* charge what the pool really grew by ... */
    pthread_mutex_unlock(&g_pool_mu);
    vgpu_mem_unreserve(dev, need); /* ... and drop the admission hold */
    if (r == CUDA_SUCCESS && dptr && *dptr) {
        struct ment e = {.key = *dptr, .size = size, .aux = (uint64_t)(uintptr_t)pool, .dev = dev, .kind = K_POOLED};
        pthread_mutex_lock(&g_mu);
        ptrmap_put(&m_ptr, &e);
        pthread_mutex_unlock(&g_mu);
    }
    return r;
}

struct a_lin { CUdeviceptr *p; size_t n; };
static CUresult call_lin(void *c) { struct a_lin *a = c; return CALL_REAL(cuMemAlloc_v2, a->p, a->n); }
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    struct a_lin a = {dptr, bytesize};
    return alloc_common(dptr, bytesize, K_LINEAR, "cuMemAlloc", call_lin, &a);
}

struct a_man { CUdeviceptr *p; size_t n; unsigned f; };
static CUresult call_man(void *c) { struct a_man *a = c; return CALL_REAL(cuMemAllocManaged, a->p, a->n, a->f); }
CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    struct a_man a = {dptr, bytesize, flags};
    return alloc_common(dptr, bytesize, K_MANAGED, "cuMemAllocManaged", call_man, &a);
}

struct a_async { CUdeviceptr *p; size_t n; CUstream s; CUmemoryPool pool; int which; };
static CUresult call_async(void *c) {
    struct a_async *a = c;
    switch (a->which) {
    case 0: return CALL_REAL(cuMemAllocAsync, a->p, a->n, a->s);
    case 1: return CALL_REAL(cuMemAllocAsync_ptsz, a->p, a->n, a->s);
    case 2: return CALL_REAL(cuMemAllocFromPoolAsync, a->p, a->n, a->pool, a->s);
    default: return CALL_REAL(cuMemAllocFromPoolAsync_ptsz, a->p, a->n, a->pool, a->s);
    }
}
CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t n, CUstream s) {
    struct a_async a = {dptr, n, s, NULL, 0};
    return alloc_pooled(dptr, n, NULL, "cuMemAllocAsync", call_async, &a);
}
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t n, CUstream s) {
    struct a_async a = {dptr, n, s, NULL, 1};
    return alloc_pooled(dptr, n, NULL, "cuMemAllocAsync", call_async, &a);
}
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s) {
    struct a_async a = {dptr, n, s, pool, 2};
    return alloc_pooled(dptr, n, pool, "cuMemAllocFromPoolAsync", call_async, &a);
}
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s) {
    struct a_async a = {dptr, n, s, pool, 3};
    return alloc_pooled(dptr, n, pool, "cuMemAllocFromPoolAsync", call_async, &a);
}

#define PITCH_ALIGN 512
CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t width, size_t height, unsigned int elemSize) {
    int dev = vgpu_current_device();
    size_t bound = ((width + PITCH_ALIGN - 1) / PITCH_ALIGN) * PITCH_ALIGN * height; /* upper bound first */
    if (vgpu_mem_reserve(dev, bound, "cuMemAllocPitch")) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMemAllocPitch_v2, dptr, pPitch, width, height, elemSize);
    if (r != CUDA_SUCCESS || !dptr || !*dptr || !pPitch) {
        vgpu_mem_unreserve(dev, bound);
        return r;
    }
    size_t actual = *pPitch * height;
    if (actual < bound) vgpu_mem_unreserve(dev, bound - actual);
    else if (actual > bound) vgpu_mem_force(dev, actual - bound);
    track(&m_ptr, *dptr, actual, dev, K_PITCH);
    return r;
}

static CUresult free_common(CUdeviceptr p, CUresult r_after_call, struct ment *e, int had) {
    (void)p;
    if (!had) return r_after_call;
    if (r_after_call != CUDA_SUCCESS) { /* still allocated */
        pthread_mutex_lock(&g_mu);
        ptrmap_put(&m_ptr, e);
        pthread_mutex_unlock(&g_mu);
    } else if (e->kind == K_POOLED) { /* back in the pool's cache: the pool's charge says what is held */
        pthread_mutex_lock(&g_pool_mu);
        for (int i = 0; i < g_npools; i++)
            if ((uint64_t)(uintptr_t)g_pools[i].pool == e->aux) pool_settle_locked(i);
        pthread_mutex_unlock(&g_pool_mu);
    } else {
        vgpu_mem_unreserve(e->dev, e->size);
    }
    return r_after_call;
}

CUresult cuMemFree_v2(CUdeviceptr dptr) {
    struct ment e;
    int had = untrack(&m_ptr, dptr, &e); /* unknown pointers are always forwarded, never swallowed */
    return free_common(dptr, CALL_REAL(cuMemFree_v2, dptr), &e, had);
}
CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream s) {
    struct ment e;
    int had = untrack(&m_ptr, dptr, &e);
    return free_common(dptr, CALL_REAL(cuMemFreeAsync, dptr, s), &e, had);
}
CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream s) {
    struct ment e;
    int had = untrack(&m_ptr, dptr, &e);
    return free_common(dptr, CALL_REAL(cuMemFreeAsync_ptsz, dptr, s), &e, had);
}

/* ---------------------------------------------------------------- VMM */
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags) {
    int dev = -1;
    if (prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && prop->location.id >= 0 &&
        prop->location.id < VGPU_MAX_DEV)
        dev = prop->location.id;
    if (dev >= 0 && vgpu_mem_reserve(dev, size, "cuMemCreate")) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMemCreate, handle, size, prop, flags);
    if (dev < 0) return r; /* host / NUMA locations are not device memory */
    if (r != CUDA_SUCCESS || !handle) {
        vgpu_mem_unreserve(dev, size);
        return r;
    }
    track(&m_handle, *handle, size, dev, K_VMM);
    return r;
}

/* Physical memory goes away when the handle is released and no mapping remains. The entry is taken
 * out of the map before the driver call, so a handle value the driver reuses right after the release
 * can never be confused with this one; it is put back if the release fails. */
CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    struct ment t;
    int had = 0, mapped = 0;
    pthread_mutex_lock(&g_mu);
    struct ment *e = ptrmap_find(&m_handle, handle);
    if (e) {
        if (e->aux == 0) had = ptrmap_take(&m_handle, handle, &t);
        else mapped = 1;
    }
    pthread_mutex_unlock(&g_mu);
    CUresult r = CALL_REAL(cuMemRelease, handle);
    if (r != CUDA_SUCCESS) {
        if (had) track(&m_handle, t.key, t.size, t.dev, t.kind);
        return r;
    }
    if (had) vgpu_mem_unreserve(t.dev, t.size);
    if (mapped) {
        pthread_mutex_lock(&g_mu);
        struct ment *m = ptrmap_find(&m_handle, handle);
        if (m) m->released = 1; /* uncharged by the last cuMemUnmap */
        pthread_mutex_unlock(&g_mu);
    }
    return r;
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags) {
    CUresult r = CALL_REAL(cuMemMap, ptr, size, offset, handle, flags);
    if (r != CUDA_SUCCESS) return r;
    pthread_mutex_lock(&g_mu);
    struct ment *e = ptrmap_find(&m_handle, handle);
    if (e) {
        e->aux++;
        struct ment v = {.key = ptr, .size = size, .aux = handle, .kind = K_VMM};
        if (ptrmap_put(&m_va, &v)) e->aux--;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    CUresult r = CALL_REAL(cuMemUnmap, ptr, size);
    if (r != CUDA_SUCCESS) return r;
    int uncharge = 0, dev = 0;
    uint64_t bytes = 0;
    pthread_mutex_lock(&g_mu);
    struct ment v;
    if (ptrmap_take(&m_va, ptr, &v)) {
        struct ment *e = ptrmap_find(&m_handle, v.aux);
        if (e && e->aux && --e->aux == 0 && e->released) {
            struct ment t;
            ptrmap_take(&m_handle, v.aux, &t);
            uncharge = 1;
            dev = t.dev;
            bytes = t.size;
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (uncharge) vgpu_mem_unreserve(dev, bytes);
    return r;
}

/* ---------------------------------------------------------------- arrays */
static size_t fmt_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return 2;
    default: return 4; /* 32-bit formats and anything newer: a conservative estimate */
    }
}
static size_t arr_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch) {
    size_t b = w * (h ? h : 1) * (d ? d : 1) * fmt_bytes(f) * (ch ? ch : 1);
    return (b + 511) & ~(size_t)511;
}

CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *desc) {
    if (!desc) return CALL_REAL(cuArrayCreate_v2, pHandle, desc);
    int dev = vgpu_current_device();
    size_t n = arr_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels);
    if (vgpu_mem_reserve(dev, n, "cuArrayCreate")) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuArrayCreate_v2, pHandle, desc);
    if (r != CUDA_SUCCESS || !pHandle) vgpu_mem_unreserve(dev, n);
    else track(&m_obj, (uint64_t)(uintptr_t)*pHandle, n, dev, K_ARRAY);
    return r;
}
CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
    if (!desc) return CALL_REAL(cuArray3DCreate_v2, pHandle, desc);
    int dev = vgpu_current_device();
    size_t n = arr_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels);
    if (vgpu_mem_reserve(dev, n, "cuArray3DCreate")) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuArray3DCreate_v2, pHandle, desc);
    if (r != CUDA_SUCCESS || !pHandle) vgpu_mem_unreserve(dev, n);
    else track(&m_obj, (uint64_t)(uintptr_t)*pHandle, n, dev, K_ARRAY);
    return r;
}
CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                unsigned int numLevels) {
    if (!desc) return CALL_REAL(cuMipmappedArrayCreate, pHandle, desc, numLevels);
    int dev = vgpu_current_device();
    size_t n = 0, w = desc->Width, h = desc->Height, d = desc->Depth;
    for (unsigned l = 0; l < (numLevels ? numLevels : 1); l++) {
        n += arr_bytes(w, h, d, desc->Format, desc->NumChannels);
        w = w > 1 ? w / 2 : 1;
        h = h > 1 ? h / 2 : h;
        d = d > 1 ? d / 2 : d;
    }
    if (vgpu_mem_reserve(dev, n, "cuMipmappedArrayCreate")) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMipmappedArrayCreate, pHandle, desc, numLevels);
    if (r != CUDA_SUCCESS || !pHandle) vgpu_mem_unreserve(dev, n);
    else track(&m_obj, (uint64_t)(uintptr_t)*pHandle, n, dev, K_MIPMAP);
    return r;
}
/* untrack first (see cuMemRelease), call the driver, put back on failure */
#define OBJ_RELEASE(k_, call)                                                                   \
    do {                                                                                         \
        struct ment e_;                                                                          \
        int had_ = untrack(&m_obj, (k_), &e_);                                                   \
        CUresult r_ = (call);                                                                    \
        if (had_) {                                                                              \
            if (r_ == CUDA_SUCCESS) vgpu_mem_unreserve(e_.dev, e_.size);                         \
            else track(&m_obj, e_.key, e_.size, e_.dev, e_.kind);                                \
        }                                                                                        \
        return r_;                                                                               \
    } while (0)
CUresult cuArrayDestroy(CUarray h) { OBJ_RELEASE((uint64_t)(uintptr_t)h, CALL_REAL(cuArrayDestroy, h)); }
CUresult cuMipmappedArrayDestroy(CUmipmappedArray h) {
    OBJ_RELEASE((uint64_t)(uintptr_t)h, CALL_REAL(cuMipmappedArrayDestroy, h));
}

/* ---------------------------------------------------------------- contexts */
/* Bytes one context costs on `dev`: configured, else measured once through NVML and shared. */
static uint64_t ctx_known(int dev) { return atomic_load(&vgpu_region()->dev[dev].ctx_overhead); }

static uint64_t ctx_measure(int dev) {
    uint64_t known = ctx_known(dev);
    if (known || vgpu_cfg.ctx_overhead_set) return known;
    nvmlDevice_t h = vgpu_nvml_device(dev);
    if (!h || !NVML_HELPER_FN(nvmlDeviceGetComputeRunningProcesses_v3)) return 0;
    nvmlProcessInfo_t infos[64];
    unsigned n = 64;
    if (NVML_HELPER_FN(nvmlDeviceGetComputeRunningProcesses_v3)(h, &n, infos) != NVML_SUCCESS) return 0;
    struct vgpu_region *R = vgpu_region();
    int slot = vgpu_slot_index();
    uint64_t mine = slot >= 0 ? atomic_load(&R->slot[slot].used[dev]) : 0;
    unsigned pid = (unsigned)R->slot[slot >= 0 ? slot : 0].pid;
    for (unsigned i = 0; i < n && i < 64; i++) {
        if (infos[i].pid != pid) continue;
        uint64_t m = infos[i].usedGpuMemory > mine ? infos[i].usedGpuMemory - mine : 0;
        uint64_t expect = 0;
        atomic_compare_exchange_strong(&R->dev[dev].ctx_overhead, &expect, m);
        LOG_INFO("device %d: measured context overhead %.1f MiB", dev, m / 1048576.0);
        return m;
    }
    return 0;
}

/* charge before creating when the size is known (so a full slice refuses the context), else after */
static int ctx_pre(int dev, uint64_t *charged) {
    *charged = 0;
    if (dev < 0 || dev >= VGPU_MAX_DEV) return 0;
    uint64_t k = ctx_known(dev);
    if (k) {
        if (vgpu_mem_reserve(dev, k, "context")) return -1;
        *charged = k;
    }
    return 0;
}
static uint64_t ctx_post(int dev, CUresult r, uint64_t charged) {
    if (dev < 0 || dev >= VGPU_MAX_DEV) return 0;
    if (r != CUDA_SUCCESS) {
        vgpu_mem_unreserve(dev, charged);
        return 0;
    }
    if (!charged) {
        charged = ctx_measure(dev);
        vgpu_mem_force(dev, charged);
    }
    return charged;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    vgpu_post_init();
    int first = 0;
    uint64_t ch = 0;
    pthread_mutex_lock(&g_mu);
    first = dev >= 0 && dev < VGPU_MAX_DEV && g_prim_ref[dev] == 0;
    pthread_mutex_unlock(&g_mu);
    if (first && ctx_pre(dev, &ch)) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuDevicePrimaryCtxRetain, pctx, dev);
    if (first) ch = ctx_post(dev, r, ch);
    if (r == CUDA_SUCCESS && dev >= 0 && dev < VGPU_MAX_DEV) {
        pthread_mutex_lock(&g_mu);
        if (g_prim_ref[dev]++ == 0) g_prim_charge[dev] = ch;
        else if (ch) { pthread_mutex_unlock(&g_mu); vgpu_mem_unreserve(dev, ch); pthread_mutex_lock(&g_mu); }
        pthread_mutex_unlock(&g_mu);
    }
    return r;
}

static void prim_drop(CUdevice dev, int all) {
    if (dev < 0 || dev >= VGPU_MAX_DEV) return;
    uint64_t ch = 0;
    pthread_mutex_lock(&g_mu);
    if (g_prim_ref[dev] > 0 && (all || --g_prim_ref[dev] == 0)) {
        g_prim_ref[dev] = 0;
        ch = g_prim_charge[dev];
        g_prim_charge[dev] = 0;
    }
    pthread_mutex_unlock(&g_mu);
    vgpu_mem_unreserve(dev, ch);
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    CUresult r = CALL_REAL(cuDevicePrimaryCtxRelease_v2, dev);
    if (r == CUDA_SUCCESS) prim_drop(dev, 0);
    return r;
}
/* the pre-11.0 names: same signature; CUDA 12 runtimes still ask for them at version 7000 */
CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
    CUresult r = CALL_REAL(cuDevicePrimaryCtxRelease, dev);
    if (r == CUDA_SUCCESS) prim_drop(dev, 0);
    return r;
}
CUresult cuDevicePrimaryCtxReset(CUdevice dev) {
    CUresult r = CALL_REAL(cuDevicePrimaryCtxReset, dev);
    if (r == CUDA_SUCCESS) prim_drop(dev, 1);
    return r;
}
CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    CUresult r = CALL_REAL(cuDevicePrimaryCtxReset_v2, dev);
    if (r == CUDA_SUCCESS) prim_drop(dev, 1);
    return r;
}

static CUresult ctx_created(CUcontext *pctx, CUdevice dev, CUresult r, uint64_t ch) {
    ch = ctx_post(dev, r, ch);
    if (r == CUDA_SUCCESS && pctx && *pctx) track(&m_obj, (uint64_t)(uintptr_t)*pctx, ch, dev, K_CTX);
    return r;
}
CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    vgpu_post_init();
    uint64_t ch;
    if (ctx_pre(dev, &ch)) return CUDA_ERROR_OUT_OF_MEMORY;
    return ctx_created(pctx, dev, CALL_REAL(cuCtxCreate_v2, pctx, flags, dev), ch);
}
CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int numParams, unsigned int flags,
                        CUdevice dev) {
    vgpu_post_init();
    uint64_t ch;
    if (ctx_pre(dev, &ch)) return CUDA_ERROR_OUT_OF_MEMORY;
    return ctx_created(pctx, dev, CALL_REAL(cuCtxCreate_v3, pctx, params, numParams, flags, dev), ch);
}
CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev) {
    vgpu_post_init();
    uint64_t ch;
    if (ctx_pre(dev, &ch)) return CUDA_ERROR_OUT_OF_MEMORY;
    return ctx_created(pctx, dev, CALL_REAL(cuCtxCreate_v4, pctx, params, flags, dev), ch);
}
CUresult cuCtxDestroy_v2(CUcontext ctx) { OBJ_RELEASE((uint64_t)(uintptr_t)ctx, CALL_REAL(cuCtxDestroy_v2, ctx)); }

/* ---------------------------------------------------------------- virtualised queries */
CUresult cuMemGetInfo_v2(size_t *free, size_t *total) {
    vgpu_pools_resample();
    CUresult r = CALL_REAL(cuMemGetInfo_v2, free, total);
    if (r != CUDA_SUCCESS || !free || !total) return r;
    struct vgpu_region *R = vgpu_region();
    int d = vgpu_current_device();
    uint64_t lim = R->dev[d].limit;
    if (!lim) return r;
    uint64_t t = lim < *total ? lim : *total;
    uint64_t u = atomic_load(&R->dev[d].used);
    uint64_t f = u >= t ? 0 : t - u; /* never underflows, never an error */
    if (f > *free) f = *free;
    *total = t;
    *free = f;
    return r;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    CUresult r = CALL_REAL(cuDeviceTotalMem_v2, bytes, dev);
    if (r != CUDA_SUCCESS || !bytes || dev < 0 || dev >= VGPU_MAX_DEV) return r;
    uint64_t lim = vgpu_region()->dev[dev].limit;
    if (lim && lim < *bytes) *bytes = lim;
    return r;
}
