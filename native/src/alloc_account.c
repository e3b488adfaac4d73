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

void vgpu_obj_track(uint64_t key, uint64_t size, int dev, int kind) { track(&m_obj, key, size, dev, kind); }

void vgpu_mem_atfork_prepare(void) { pthread_mutex_lock(&g_mu); }
void vgpu_mem_atfork_parent(void) { pthread_mutex_unlock(&g_mu); }

/* ---------------------------------------------------------------- stream-ordered pools */
/* What a pool holds is device memory whether or not it is handed out, so the charge of a pool is its
 * RESERVED_MEM_CURRENT, re-sampled after each pool operation, on the OOM path, on memory queries and
 * every 100 ms by the watcher (a pool shrinks at synchronisation). */
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
}

/* ---------------------------------------------------------------- linear family */
/* An allocation between admission and commit: admit_*() reserves, the driver is called, commit()
 * tracks the pointer or rolls the reservation back. */
struct hold {
    int dev;
    int kind;
    size_t size;
    int pool_i;    /* index into g_pools for a pooled allocation, else -1 */
    uint64_t need; /* pooled: the admission hold, dropped once the pool's growth is charged */
    CUmemoryPool pool;
};

static int admit(struct hold *h, size_t size, int kind, const char *what) {
    *h = (struct hold){.dev = vgpu_current_device(), .kind = kind, .size = size, .pool_i = -1};
    return vgpu_mem_reserve(h->dev, size, what) && (!vgpu_pools_resample() || vgpu_mem_reserve(h->dev, size, what));
}

/* Pooled allocation: admit the part the pool cannot serve from its cache, call, then charge the
 * pool's actual growth. Falls back to per-allocation charging without the pool attribute API. */
static int admit_pooled(struct hold *h, size_t size, CUmemoryPool pool, const char *what) {
    int dev = vgpu_current_device();
    if (!pool && HELPER(cuDeviceGetMemPool) && HELPER(cuDeviceGetMemPool)(&pool, dev) != CUDA_SUCCESS) pool = NULL;
    int ok1, ok2;
    uint64_t reserved = pool ? pool_attr(pool, POOL_ATTR_RESERVED_CURRENT, &ok1) : 0;
    uint64_t inuse = pool ? pool_attr(pool, POOL_ATTR_USED_CURRENT, &ok2) : 0;
    if (!pool || !ok1 || !ok2) return admit(h, size, K_ASYNC, what);
    pthread_mutex_lock(&g_pool_mu);
    int i = pool_index(pool, dev);
    if (i >= 0) pool_settle_locked(i); /* a pool seen for the first time may already hold memory */
    pthread_mutex_unlock(&g_pool_mu);
    if (i < 0) return admit(h, size, K_ASYNC, what);
    uint64_t cached = reserved > inuse ? reserved - inuse : 0;
    uint64_t need = size > cached ? size - cached : 0;
    if (need && vgpu_mem_reserve(dev, need, what) && (!vgpu_pools_resample() || vgpu_mem_reserve(dev, need, what)))
        return 1;
    *h = (struct hold){.dev = dev, .kind = K_POOLED, .size = size, .pool_i = i, .need = need, .pool = pool};
    return 0;
}

static CUresult commit(const struct hold *h, CUresult r, CUdeviceptr *dptr) {
    if (h->pool_i >= 0) {
        pthread_mutex_lock(&g_pool_mu);
        pool_settle_locked(h->pool_i); /* charge what the pool really grew by ... */
        pthread_mutex_unlock(&g_pool_mu);
        vgpu_mem_unreserve(h->dev, h->need); /* ... and drop the admission hold */
        if (r == CUDA_SUCCESS && dptr && *dptr) {
            struct ment e = {.key = *dptr, .size = h->size, .aux = (uint64_t)(uintptr_t)h->pool, .dev = h->dev,
                             .kind = K_POOLED};
            pthread_mutex_lock(&g_mu);
            ptrmap_put(&m_ptr, &e);
            pthread_mutex_unlock(&g_mu);
        }
        return r;
    }
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
        if (admit_pooled(&h, bytesize, NULL, #base)) return CUDA_ERROR_OUT_OF_MEMORY;            \
        return commit(&h, CALL_REAL_ARGS(name, args), dptr);                                     \
    }
#define WRAP_alloc_from_pool(name, base, params, args)                                           \
    CUresult name params {                                                                       \
        struct hold h;                                                                           \
        if (admit_pooled(&h, bytesize, pool, #base)) return CUDA_ERROR_OUT_OF_MEMORY;            \
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
        pthread_mutex_lock(&g_pool_mu);
        for (int i = 0; i < g_npools; i++)
            if ((uint64_t)(uintptr_t)g_pools[i].pool == e->aux) pool_settle_locked(i);
        pthread_mutex_unlock(&g_pool_mu);
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
