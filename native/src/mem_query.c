/* Virtualised memory queries: the driver's answer capped by the container's limit and usage. */
#include "vgpu.h"

CUresult cuMemGetInfo_v2(size_t *free, size_t *total) {
    vgpu_pools_resample();
    CUresult r = CALL_REAL(cuMemGetInfo_v2, free, total);
    if (r != CUDA_SUCCESS || !free || !total) return r;
    struct vgpu_region *R = vgpu_region();
    int d = vgpu_current_device();
    uint64_t lim = vgpu_mem_limit(R, d);
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
    uint64_t lim = vgpu_mem_limit(vgpu_region(), dev);
    if (lim && lim < *bytes) *bytes = lim;
    return r;
}
