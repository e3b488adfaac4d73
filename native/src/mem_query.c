/* Virtualised memory queries: the driver's answer capped by the container's limit and usage. */
#include "vgpu.h"

/* total = min(limit, physical); free = total - used, never above the physical free, never negative */
static void clamp_info(uint64_t *free, uint64_t *total) {
    struct vgpu_region *R = vgpu_region();
    int d = vgpu_current_device();
    uint64_t lim = vgpu_mem_limit(R, d);
    if (!lim) return;
    uint64_t t = lim < *total ? lim : *total;
    uint64_t u = atomic_load(&R->dev[d].used);
    uint64_t f = u >= t ? 0 : t - u; /* never underflows, never an error */
    if (f > *free) f = *free;
    *total = t;
    *free = f;
}

/* cuMemGetInfo_v2 and the v1 cuMemGetInfo (32-bit sizes) */
#define WRAP_mem_info(name, base, params, args)                                                  \
    CUresult name params {                                                                       \
        vgpu_pools_resample();                                                                   \
        CUresult r = CALL_REAL_ARGS(name, args);                                                 \
        if (r != CUDA_SUCCESS || !free || !total) return r;                                      \
        uint64_t f = *free, t = *total;                                                          \
        clamp_info(&f, &t);                                                                      \
        *free = (__typeof__(*free))f;                                                            \
        *total = (__typeof__(*total))t;                                                          \
        return r;                                                                                \
    }

/* cuDeviceTotalMem_v2 and the v1 cuDeviceTotalMem */
#define WRAP_total_mem(name, base, params, args)                                                 \
    CUresult name params {                                                                       \
        CUresult r = CALL_REAL_ARGS(name, args);                                                 \
        int d_ = vgpu_dev_index(dev);                                                            \
        if (r != CUDA_SUCCESS || !bytes || d_ < 0) return r;                                     \
        uint64_t lim = vgpu_mem_limit(vgpu_region(), d_);                                        \
        if (lim && lim < *bytes) *bytes = (__typeof__(*bytes))lim;                               \
        return r;                                                                                \
    }
#include "hooks_gen.h"
