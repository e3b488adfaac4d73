/* Allocation accounting: every allocation hook reserves in the shared region, calls the driver, then
 * commits (remembers what it charged) or rolls back; the free hooks uncharge what was remembered.
 * Linear, managed, pitch, stream-ordered and pooled memory, VMM handles and mappings, arrays. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "account.h"

/* ---------------------------------------------------------------- tracked allocations */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* all four maps */
static struct ptrmap m_ptr, m_handle, m_va, m_obj;

static void track(struct ptrmap *m, uint64_t key, uint64_t size, int dev, int kind) {
    struct ment e = {.key = key, .size = size, .dev = dev, .kind = (uint16_t)kind, .refs = kind == K_VMM};
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

void vgpu_obj_track(uint64_t key, uint64_t size, int dev, int kind) { track(&m_obj, key, size, dev, kind); }

void vgpu_mem_atfork_prepare(void) { pthread_mutex_lock(&g_mu); }
void vgpu_mem_atfork_parent(void) { pthread_mutex_unlock(&g_mu); }

/* ---------------------------------------------------------------- stream-ordered pools */
/* What a pool holds is device memory whether or not it is handed out, so the charge of a pool is its
 * RESERVED_MEM_CURRENT, re-sampled after each pool operation, on the OOM path, on memory queries and
 * every 100 ms by the watcher (a pool shrinks at synchronisation). Pools are kept in a map (key: the
 * pool, size: what it is charged, dev: the region index of its device, aux: its CUDA ordinal + 1), as
 * many as the process makes. A pool is charged to its own device: the one cuMemPoolCreate named, or
 * for a device's default / current pool that device, whatever device is current when it is used. */
enum { POOL_ATTR_RESERVED_CURRENT = 5, POOL_ATTR_USED_CURRENT = 7 };
static struct ptrmap m_pool;                                   /* under g_pool_mu */
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;  /* m_pool */
/* One pooled allocation at a time in this process, from reading the pool's cache to charging its
 * growth: two threads that both saw the same cached bytes would both be admitted and the pool grow
 * past the limit. Held across the driver call; never taken with g_pool_mu or g_mu held. */
static pthread_mutex_t g_pool_adm_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t pool_attr(CUmemoryPool pool, int attr, int *ok) {
    cuuint64_t v = 0;
    *ok = HELPER(cuMemPoolGetAttribute) && HELPER(cuMemPoolGetAttribute)(pool, attr, &v) == CUDA_SUCCESS;
    return *ok ? v : 0;
}

/* brings the charge of pool entry e to its current reservation; caller holds g_pool_mu */
static void pool_settle_locked(struct ment *e) {
    int ok;
    uint64_t cur = pool_attr((CUmemoryPool)(uintptr_t)e->key, POOL_ATTR_RESERVED_CURRENT, &ok); /* destroyed: 0 */
    uint64_t was = e->size;
    e->size = cur;
    if (cur > was) vgpu_mem_force(e->dev, cur - was);
    else if (cur < was) vgpu_mem_unreserve(e->dev, was - cur);
}

static void pool_settle(CUmemoryPool pool) {
    pthread_mutex_lock(&g_pool_mu);
    struct ment *e = ptrmap_find(&m_pool, (uint64_t)(uintptr_t)pool);
    if (e) pool_settle_locked(e);
    pthread_mutex_unlock(&g_pool_mu);
}

static int current_ordinal(void) {
    CUdevice d = 0;
    if (vgpu_ndev == 1 || !HELPER(cuCtxGetDevice) || HELPER(cuCtxGetDevice)(&d) != CUDA_SUCCESS) return 0;
    return d;
}

/* the CUDA ordinal a pool allocates on: recorded at creation, else the device whose default or current
 * pool it is, else (a pool imported from another process) the current device */
static int pool_ordinal(CUmemoryPool pool) {
    pthread_mutex_lock(&g_pool_mu);
    struct ment *e = ptrmap_find(&m_pool, (uint64_t)(uintptr_t)pool);
    int ord = e ? (int)e->aux - 1 : -1;
    pthread_mutex_unlock(&g_pool_mu);
    if (ord >= 0) return ord;
    int n = 0;
    if (HELPER(cuDeviceGetCount) && HELPER(cuDeviceGetCount)(&n) != CUDA_SUCCESS) n = 0;
    for (int d = 0; d < n && d < VGPU_MAX_DEV; d++) {
        CUmemoryPool p = NULL;
        if ((HELPER(cuDeviceGetMemPool) && HELPER(cuDeviceGetMemPool)(&p, d) == CUDA_SUCCESS && p == pool) ||
            (HELPER(cuDeviceGetDefaultMemPool) && HELPER(cuDeviceGetDefaultMemPool)(&p, d) == CUDA_SUCCESS &&
             p == pool))
            return d;
    }
    return current_ordinal();
}

/* the map entry of `pool` on ordinal `ord`, added (and charged for what it already holds) when new;
 * NULL when out of host memory. Caller holds g_pool_mu. */
static struct ment *pool_entry_locked(CUmemoryPool pool, int ord) {
    struct ment *e = ptrmap_find(&m_pool, (uint64_t)(uintptr_t)pool);
    if (e) return e;
    int dev = vgpu_dev_index(ord);
    struct ment n = {.key = (uint64_t)(uintptr_t)pool, .aux = (uint64_t)ord + 1, .dev = dev < 0 ? 0 : dev,
                     .kind = K_POOLED};
    if (ptrmap_put(&m_pool, &n)) return NULL;
    e = ptrmap_find(&m_pool, n.key);
    pool_settle_locked(e); /* a pool seen for the first time may already hold memory */
    return e;
}

int vgpu_pools_resample(void) {
    pthread_mutex_lock(&g_pool_mu);
    int n = (int)m_pool.n;
    for (size_t i = 0; i < m_pool.cap; i++)
        if (m_pool.t[i].key) pool_settle_locked(&m_pool.t[i]);
    pthread_mutex_unlock(&g_pool_mu);
    return n;
}

CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    CUresult r = CALL_REAL(cuMemPoolCreate, pool, props);
    if (r != CUDA_SUCCESS || !pool || !*pool || !props || props->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return r;
    pthread_mutex_lock(&g_pool_mu);
    struct ment *e = ptrmap_find(&m_pool, (uint64_t)(uintptr_t)*pool);
    if (e) { /* a handle the driver reuses: the old pool's charge is gone with it */
        struct ment old;
        ptrmap_take(&m_pool, e->key, &old);
        if (old.size) vgpu_mem_unreserve(old.dev, old.size);
    }
    if (!pool_entry_locked(*pool, props->location.id))
        LOG_ERR("out of host memory tracking a memory pool; it is charged per allocation");
    pthread_mutex_unlock(&g_pool_mu);
    return r;
}

CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    CUresult r = CALL_REAL(cuMemPoolDestroy, pool);
    if (r != CUDA_SUCCESS) return r;
    struct ment old;
    pthread_mutex_lock(&g_pool_mu);
    int had = ptrmap_take(&m_pool, (uint64_t)(uintptr_t)pool, &old);
    pthread_mutex_unlock(&g_pool_mu);
    if (had && old.size) vgpu_mem_unreserve(old.dev, old.size); /* its memory goes back to the device */
    return r;
}

void vgpu_mem_atfork_child(void) {
    pthread_mutex_init(&g_pool_mu, NULL);
    pthread_mutex_init(&g_pool_adm_mu, NULL);
    ptrmap_clear(&m_pool);
    /* CUDA state does not survive fork: the child starts with nothing charged */
    pthread_mutex_init(&g_mu, NULL);
    struct ptrmap *all[] = {&m_ptr, &m_handle, &m_va, &m_obj};
    for (size_t i = 0; i < 4; i++) ptrmap_clear(all[i]);
}

/* ---------------------------------------------------------------- linear family */
/* An allocation between admission and commit: admit_*() reserves, the driver is called, commit()
 * tracks the pointer or rolls the reservation back. */
struct hold {
    int dev;
    int kind;
    size_t size;
    int pooled;    /* a pooled allocation: g_pool_adm_mu is held until commit */
    uint64_t need; /* pooled: the admission hold, dropped once the pool's growth is charged */
    CUmemoryPool pool;
    CUstream stream;
};

static int reserve_or_resample(int dev, uint64_t size, const char *what) {
    return vgpu_mem_reserve(dev, size, what) && (!vgpu_pools_resample() || vgpu_mem_reserve(dev, size, what));
}

static int admit_on(struct hold *h, int dev, size_t size, int kind, const char *what) {
    *h = (struct hold){.dev = dev, .kind = kind, .size = size};
    return reserve_or_resample(h->dev, size, what);
}

static int admit(struct hold *h, size_t size, int kind, const char *what) {
    return admit_on(h, vgpu_current_device(), size, kind, what);
}

/* the CUDA ordinal of the device of context `c`, made current for the question on this thread only
 * (push, ask, pop: every driver since CUDA 4.0 has them); -1 when the driver does not answer */
static int ctx_ordinal(CUcontext c) {
    CUcontext cur = NULL, popped = NULL;
    CUdevice d = 0;
    if (HELPER(cuCtxGetCurrent) && HELPER(cuCtxGetCurrent)(&cur) == CUDA_SUCCESS && cur == c) return current_ordinal();
    if (!HELPER(cuCtxPushCurrent_v2) || !HELPER(cuCtxPopCurrent_v2) || !HELPER(cuCtxGetDevice) ||
        HELPER(cuCtxPushCurrent_v2)(c) != CUDA_SUCCESS)
        return -1;
    CUresult r = HELPER(cuCtxGetDevice)(&d);
    HELPER(cuCtxPopCurrent_v2)(&popped);
    return r == CUDA_SUCCESS ? d : -1;
}

/* the CUDA ordinal of a stream's device: cuStreamGetDevice (CUDA 12.8), else the device of the
 * stream's context (cuStreamGetCtx, CUDA 9.2); the null, legacy and per-thread streams, and a
 * stream neither answers for, are the current device's */
static int stream_ordinal(CUstream s) {
    CUdevice d;
    CUcontext c = NULL;
    if ((uintptr_t)s <= 2 || vgpu_ndev == 1) return current_ordinal();
    if (HELPER(cuStreamGetDevice) && HELPER(cuStreamGetDevice)(s, &d) == CUDA_SUCCESS) return d;
    int ord = HELPER(cuStreamGetCtx) && HELPER(cuStreamGetCtx)(s, &c) == CUDA_SUCCESS && c ? ctx_ordinal(c) : -1;
    return ord >= 0 ? ord : current_ordinal();
}

/* Pooled allocation: admit the part the pool cannot serve from its cache, call, then charge the
 * pool's actual growth (commit). cuMemAllocAsync takes the current pool of the stream's device.
 * Falls back to per-allocation charging without the pool attribute API. */
static int admit_pooled(struct hold *h, size_t size, CUmemoryPool pool, CUstream s, const char *what) {
    int ord = pool ? pool_ordinal(pool) : stream_ordinal(s);
    if (!pool && (!HELPER(cuDeviceGetMemPool) || HELPER(cuDeviceGetMemPool)(&pool, ord) != CUDA_SUCCESS)) pool = NULL;
    int dev = vgpu_dev_index(ord);
    if (dev < 0) dev = vgpu_current_device();
    if (!pool) return admit_on(h, dev, size, K_ASYNC, what);
    pthread_mutex_lock(&g_pool_adm_mu);
    pthread_mutex_lock(&g_pool_mu);
    struct ment *e = pool_entry_locked(pool, ord);
    if (e) pool_settle_locked(e);
    pthread_mutex_unlock(&g_pool_mu);
    int ok1 = 0, ok2 = 0;
    uint64_t reserved = e ? pool_attr(pool, POOL_ATTR_RESERVED_CURRENT, &ok1) : 0;
    uint64_t inuse = e ? pool_attr(pool, POOL_ATTR_USED_CURRENT, &ok2) : 0;
    if (!ok1 || !ok2) {
        pthread_mutex_unlock(&g_pool_adm_mu);
        return admit_on(h, dev, size, K_ASYNC, what);
    }
    uint64_t cached = reserved > inuse ? reserved - inuse : 0;
    uint64_t need = size > cached ? size - cached : 0;
    if (need && reserve_or_resample(dev, need, what)) {
        pthread_mutex_unlock(&g_pool_adm_mu);
        return 1;
    }
    *h = (struct hold){.dev = dev, .kind = K_POOLED, .size = size, .pooled = 1, .need = need, .pool = pool,
                       .stream = s};
    return 0;
}

/* A pool that grew by more than was admitted (its driver's granularity) is charged the excess only
 * within the limit; beyond it the allocation is handed back and the pool trimmed. */
static CUresult commit_pooled(const struct hold *h, CUresult r, CUdeviceptr *dptr) {
    int ok;
    uint64_t cur = pool_attr(h->pool, POOL_ATTR_RESERVED_CURRENT, &ok), extra = 0;
    pthread_mutex_lock(&g_pool_mu);
    struct ment *e = ptrmap_find(&m_pool, (uint64_t)(uintptr_t)h->pool);
    uint64_t was = e ? e->size : cur;
    pthread_mutex_unlock(&g_pool_mu);
    uint64_t grown = ok && cur > was ? cur - was : 0;
    if (r == CUDA_SUCCESS && grown > h->need) {
        extra = grown - h->need;
        if (vgpu_mem_reserve(h->dev, extra, "cuMemAllocAsync (pool growth)")) {
            extra = 0;
            if (dptr && *dptr) CALL_REAL(cuMemFreeAsync, *dptr, h->stream);
            if (HELPER(cuMemPoolTrimTo)) HELPER(cuMemPoolTrimTo)(h->pool, 0);
            r = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    pool_settle(h->pool); /* charge what the pool really grew by ... */
    vgpu_mem_unreserve(h->dev, h->need + extra); /* ... and drop the admission holds */
    pthread_mutex_unlock(&g_pool_adm_mu);
    if (r == CUDA_SUCCESS && dptr && *dptr) {
        struct ment m = {.key = *dptr, .size = h->size, .aux = (uint64_t)(uintptr_t)h->pool, .dev = h->dev,
                         .kind = K_POOLED};
        pthread_mutex_lock(&g_mu);
        ptrmap_put(&m_ptr, &m);
        pthread_mutex_unlock(&g_mu);
    }
    return r;
}

static CUresult commit(const struct hold *h, CUresult r, CUdeviceptr *dptr) {
    if (h->pooled) return commit_pooled(h, r, dptr);
    if (r != CUDA_SUCCESS || !dptr || !*dptr) {
        vgpu_mem_unreserve(h->dev, h->size);
        return r;
    }
    track(&m_ptr, *dptr, h->size, h->dev, h->kind);
    return r;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    struct hold h;
    if (admit(&h, bytesize, K_LINEAR, "cuMemAlloc")) return CUDA_ERROR_OUT_OF_MEMORY;
    return commit(&h, CALL_REAL(cuMemAlloc_v2, dptr, bytesize), dptr);
}

CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize) {
    struct hold h;
    if (admit(&h, bytesize, K_LINEAR, "cuMemAlloc")) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMemAlloc, dptr, bytesize);
    CUdeviceptr p = (r == CUDA_SUCCESS && dptr) ? *dptr : 0;
    return commit(&h, r, &p);
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    struct hold h;
    if (admit(&h, bytesize, K_MANAGED, "cuMemAllocManaged")) return CUDA_ERROR_OUT_OF_MEMORY;
    return commit(&h, CALL_REAL(cuMemAllocManaged, dptr, bytesize, flags), dptr);
}

/* cuMemAllocAsync[_ptsz] take the device's current pool, cuMemAllocFromPoolAsync[_ptsz] name one */
#define WRAP_alloc_async(name, base, params, args)                                               \
    CUresult name params {                                                                       \
        struct hold h;                                                                           \
        if (admit_pooled(&h, bytesize, NULL, s, #base)) return CUDA_ERROR_OUT_OF_MEMORY;         \
        return commit(&h, CALL_REAL_ARGS(name, args), dptr);                                     \
    }
#define WRAP_alloc_from_pool(name, base, params, args)                                           \
    CUresult name params {                                                                       \
        struct hold h;                                                                           \
        if (admit_pooled(&h, bytesize, pool, s, #base)) return CUDA_ERROR_OUT_OF_MEMORY;         \
        return commit(&h, CALL_REAL_ARGS(name, args), dptr);                                     \
    }

#define PITCH_ALIGN 512
/* pitch allocations: reserve an upper bound first, then settle to the driver's pitch x height */
static int pitch_reserve(int dev, size_t width, size_t height, size_t *bound) {
    *bound = ((width + PITCH_ALIGN - 1) / PITCH_ALIGN) * PITCH_ALIGN * height;
    return vgpu_mem_reserve(dev, *bound, "cuMemAllocPitch");
}
static CUresult pitch_settle(int dev, CUresult r, uint64_t ptr, int have_pitch, size_t pitch, size_t height,
                             size_t bound) {
    if (r != CUDA_SUCCESS || !ptr || !have_pitch) {
        vgpu_mem_unreserve(dev, bound);
        return r;
    }
    size_t actual = pitch * height;
    if (actual < bound) vgpu_mem_unreserve(dev, bound - actual);
    else if (actual > bound) vgpu_mem_force(dev, actual - bound);
    track(&m_ptr, ptr, actual, dev, K_PITCH);
    return r;
}
CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t width, size_t height, unsigned int elemSize) {
    int dev = vgpu_current_device();
    size_t bound;
    if (pitch_reserve(dev, width, height, &bound)) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMemAllocPitch_v2, dptr, pPitch, width, height, elemSize);
    return pitch_settle(dev, r, dptr ? *dptr : 0, pPitch != NULL, pPitch ? *pPitch : 0, height, bound);
}
CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int width, unsigned int height,
                         unsigned int elemSize) {
    int dev = vgpu_current_device();
    size_t bound;
    if (pitch_reserve(dev, width, height, &bound)) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CALL_REAL(cuMemAllocPitch, dptr, pPitch, width, height, elemSize);
    return pitch_settle(dev, r, dptr ? *dptr : 0, pPitch != NULL, pPitch ? *pPitch : 0, height, bound);
}

static CUresult freed(CUresult r_after_call, struct ment *e, int had) {
    if (!had) return r_after_call;
    if (r_after_call != CUDA_SUCCESS) { /* still allocated */
        pthread_mutex_lock(&g_mu);
        ptrmap_put(&m_ptr, e);
        pthread_mutex_unlock(&g_mu);
    } else if (e->kind == K_POOLED) { /* back in the pool's cache: the pool's charge says what is held */
        pool_settle((CUmemoryPool)(uintptr_t)e->aux);
    } else {
        vgpu_mem_unreserve(e->dev, e->size);
    }
    return r_after_call;
}

/* cuMemFree_v2, cuMemFreeAsync[_ptsz]: unknown pointers are always forwarded, never swallowed */
#define WRAP_mem_free(name, base, params, args)                                                  \
    CUresult name params {                                                                       \
        struct ment e;                                                                           \
        int had = untrack(&m_ptr, dptr, &e);                                                     \
        return freed(CALL_REAL_ARGS(name, args), &e, had);                                       \
    }

/* ---------------------------------------------------------------- VMM */
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags) {
    int dev = -1;
    if (prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE) dev = vgpu_dev_index(prop->location.id);
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

/* Physical memory goes away when every reference to the handle (cuMemCreate's, each
 * cuMemRetainAllocationHandle's) is released and no mapping remains. The entry is taken out of the map
 * before the driver call of the last release, so a handle value the driver reuses right after the
 * release can never be confused with this one; it is put back if the release fails. */
CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    struct ment t;
    int had = 0, known = 0;
    pthread_mutex_lock(&g_mu);
    struct ment *e = ptrmap_find(&m_handle, handle);
    if (e) {
        if (e->aux == 0 && e->refs <= 1) had = ptrmap_take(&m_handle, handle, &t);
        else known = 1;
    }
    pthread_mutex_unlock(&g_mu);
    CUresult r = CALL_REAL(cuMemRelease, handle);
    if (r != CUDA_SUCCESS) {
        if (had) {
            pthread_mutex_lock(&g_mu);
            ptrmap_put(&m_handle, &t);
            pthread_mutex_unlock(&g_mu);
        }
        return r;
    }
    if (had) vgpu_mem_unreserve(t.dev, t.size);
    if (known) {
        int uncharge = 0;
        pthread_mutex_lock(&g_mu);
        struct ment *m = ptrmap_find(&m_handle, handle);
        if (m && m->refs && --m->refs == 0 && m->aux == 0) uncharge = ptrmap_take(&m_handle, handle, &t);
        pthread_mutex_unlock(&g_mu); /* with mappings left, the last cuMemUnmap uncharges */
        if (uncharge) vgpu_mem_unreserve(t.dev, t.size);
    }
    return r;
}

/* one more reference to the handle behind a mapped address: the memory stays until it is released */
CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr) {
    CUresult r = CALL_REAL(cuMemRetainAllocationHandle, handle, addr);
    if (r != CUDA_SUCCESS || !handle) return r;
    pthread_mutex_lock(&g_mu);
    struct ment *e = ptrmap_find(&m_handle, *handle);
    if (e && e->refs < UINT16_MAX) e->refs++;
    pthread_mutex_unlock(&g_mu);
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
        if (e && e->aux && --e->aux == 0 && e->refs == 0) {
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

/* an array of n bytes: reserve, create, track or roll back */
static CUresult arr_created(int dev, size_t n, CUresult r, CUarray *pHandle) {
    if (r != CUDA_SUCCESS || !pHandle) vgpu_mem_unreserve(dev, n);
    else track(&m_obj, (uint64_t)(uintptr_t)*pHandle, n, dev, K_ARRAY);
    return r;
}
#define ARRAY_CREATE(name, w, h, d, fmt, ch)                                                     \
    do {                                                                                         \
        if (!desc) return CALL_REAL(name, pHandle, desc);                                        \
        int dev_ = vgpu_current_device();                                                        \
        size_t n_ = arr_bytes(w, h, d, fmt, ch);                                                 \
        if (vgpu_mem_reserve(dev_, n_, #name)) return CUDA_ERROR_OUT_OF_MEMORY;                  \
        return arr_created(dev_, n_, CALL_REAL(name, pHandle, desc), pHandle);                   \
    } while (0)
CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *desc) {
    ARRAY_CREATE(cuArrayCreate_v2, desc->Width, desc->Height, 1, desc->Format, desc->NumChannels);
}
CUresult cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *desc) {
    ARRAY_CREATE(cuArrayCreate, desc->Width, desc->Height, 1, desc->Format, desc->NumChannels);
}
CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
    ARRAY_CREATE(cuArray3DCreate_v2, desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels);
}
CUresult cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *desc) {
    ARRAY_CREATE(cuArray3DCreate, desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels);
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

/* ---------------------------------------------------------------- destroying tracked objects */
static CUresult obj_destroyed(const struct ment *e, int had, CUresult r) {
    if (had) {
        if (r == CUDA_SUCCESS) vgpu_mem_unreserve(e->dev, e->size);
        else track(&m_obj, e->key, e->size, e->dev, e->kind);
    }
    return r;
}
/* cuArrayDestroy, cuMipmappedArrayDestroy, cuCtxDestroy_v2 (rows whose one parameter is the object):
 * untracked before the driver call (see cuMemRelease), tracked again if the driver refuses */
#define WRAP_obj_destroy(name, base, params, args)                                               \
    CUresult name params {                                                                       \
        struct ment e;                                                                           \
        int had = untrack(&m_obj, (uint64_t)(uintptr_t)args, &e);                                \
        return obj_destroyed(&e, had, CALL_REAL_ARGS(name, args));                               \
    }

#include "hooks_gen.h"
