/* NVML: the shim's own use (utilisation, process memory) and the virtualised memory queries. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu.h"

static const char *const nvml_helper_names[N_COUNT] = {
#define CU_HELPER(name, params)
#define NVML_HELPER(name, params) #name,
#include "helpers.def"
#undef CU_HELPER
#undef NVML_HELPER
};
static const struct {
    const char *name;
    void *hook;
} nvml_hooks[NH_COUNT] = {
#define NVML_HOOK(name, params, args) {#name, (void *)&name},
#include "nvml_hooks.def"
#undef NVML_HOOK
};

void *vgpu_nvml_helper[N_COUNT];
void *vgpu_nvml_real[NH_COUNT];
int vgpu_nvml_ok;
static void *g_nvml;
static void *g_nvml_base;
static pthread_once_t g_nvml_once = PTHREAD_ONCE_INIT;
extern void *vgpu_dlsym_in_object(void *handle, const char *name);

static void nvml_load_once(void) {
    vgpu_init();
    const char *path = vgpu_knob("LIBVGPU_REAL_LIBNVML");
    if (!path || !*path) path = "libnvidia-ml.so.1";
    g_nvml = dlopen(path, RTLD_NOW | RTLD_NODELETE);
    if (!g_nvml) {
        LOG_INFO("cannot load %s (%s)", path, dlerror());
        return;
    }
    for (int i = 0; i < N_COUNT; i++) vgpu_nvml_helper[i] = vgpu_dlsym_in_object(g_nvml, nvml_helper_names[i]);
    for (int i = 0; i < NH_COUNT; i++) vgpu_nvml_real[i] = vgpu_dlsym_in_object(g_nvml, nvml_hooks[i].name);
    Dl_info di;
    if (vgpu_nvml_helper[N_nvmlInit_v2] && dladdr(vgpu_nvml_helper[N_nvmlInit_v2], &di)) g_nvml_base = di.dli_fbase;
    if (NVML_HELPER_FN(nvmlInit_v2) && NVML_HELPER_FN(nvmlInit_v2)() == NVML_SUCCESS)
        vgpu_nvml_ok = 1;
    else
        LOG_INFO("nvmlInit_v2 failed");
}

void vgpu_nvml_load(void) { pthread_once(&g_nvml_once, nvml_load_once); }

void *vgpu_nvml_hook_ptr(const char *name, void *caller) {
    for (int i = 0; i < NH_COUNT; i++) {
        if (strcmp(nvml_hooks[i].name, name)) continue;
        vgpu_nvml_load();
        if (!vgpu_nvml_real[i]) return NULL;
        Dl_info di;
        if (g_nvml_base && caller && dladdr(caller, &di) && di.dli_fbase == g_nvml_base) return NULL;
        return nvml_hooks[i].hook;
    }
    return NULL;
}

void vgpu_uuid_str(const CUuuid *u, char *out, size_t n) {
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

nvmlDevice_t vgpu_nvml_device(int cudadev) {
    vgpu_nvml_load();
    if (!vgpu_nvml_ok) return NULL;
    nvmlDevice_t h = NULL;
    struct vgpu_region *R = vgpu_region();
    char uuid[sizeof R->dev[0].uuid + 1] = ""; /* the region is writable by the tenant: bounded copy */
    if (R) snprintf(uuid, sizeof uuid, "%.*s", (int)sizeof R->dev[0].uuid, R->dev[cudadev].uuid);
    if (uuid[0] && NVML_HELPER_FN(nvmlDeviceGetHandleByUUID) &&
        NVML_HELPER_FN(nvmlDeviceGetHandleByUUID)(uuid, &h) == NVML_SUCCESS)
        return h;
    if (NVML_HELPER_FN(nvmlDeviceGetHandleByIndex_v2) &&
        NVML_HELPER_FN(nvmlDeviceGetHandleByIndex_v2)((unsigned)cudadev, &h) == NVML_SUCCESS)
        return h;
    return NULL;
}

/* CUDA index of an NVML device: by UUID as recorded by the CUDA side, else by NVML index. */
static int cuda_index(nvmlDevice_t dev) {
    struct vgpu_region *R = vgpu_region();
    char uuid[96];
    int known = 0;
    if (NVML_HELPER_FN(nvmlDeviceGetUUID) && NVML_HELPER_FN(nvmlDeviceGetUUID)(dev, uuid, sizeof uuid) == 0) {
        for (int d = 0; d < VGPU_MAX_DEV; d++) {
            known |= R->dev[d].uuid[0] != 0;
            if (R->dev[d].uuid[0] && !strncmp(R->dev[d].uuid, uuid, sizeof R->dev[d].uuid)) return d;
        }
        if (known) return -1; /* a GPU this container's CUDA does not see: not part of the slice */
    }
    unsigned idx = 0;
    if (NVML_HELPER_FN(nvmlDeviceGetIndex) && NVML_HELPER_FN(nvmlDeviceGetIndex)(dev, &idx) == 0 &&
        idx < VGPU_MAX_DEV)
        return (int)idx;
    return -1;
}

/* total = min(limit, physical); used = min(container charge, total); free = total - used. */
static int virtualize(int d, unsigned long long *total, unsigned long long *used, unsigned long long *free) {
    struct vgpu_region *R = vgpu_region();
    uint64_t lim = d < 0 ? 0 : vgpu_mem_limit(R, d);
    if (!lim) return 0;
    unsigned long long t = lim < *total ? lim : *total;
    unsigned long long u = atomic_load(&R->dev[d].used);
    if (u > t) u = t;
    unsigned long long f = t - u;
    if (f > *free) f = *free; /* never promise more than the card has */
    *total = t;
    *used = t - f;
    *free = f;
    return 1;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    vgpu_nvml_load();
    nvmlDeviceGetMemoryInfo_fn f = (nvmlDeviceGetMemoryInfo_fn)vgpu_nvml_real[NH_nvmlDeviceGetMemoryInfo];
    if (!f) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t r = f(device, memory);
    if (r == NVML_SUCCESS && memory) virtualize(cuda_index(device), &memory->total, &memory->used, &memory->free);
    return r;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    vgpu_nvml_load();
    nvmlDeviceGetMemoryInfo_v2_fn f = (nvmlDeviceGetMemoryInfo_v2_fn)vgpu_nvml_real[NH_nvmlDeviceGetMemoryInfo_v2];
    if (!f) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t r = f(device, memory);
    if (r == NVML_SUCCESS && memory) {
        unsigned long long total = memory->total, used = memory->used + memory->reserved, free = memory->free;
        if (virtualize(cuda_index(device), &total, &used, &free)) {
            memory->total = total;
            memory->reserved = 0;
            memory->used = used;
            memory->free = free;
        }
    }
    return r;
}

/* ---------------------------------------------------------------- process lists */
/* NVML lists every process on the card, other containers' included: keep the ones of live slots of
 * this container's region (by host PID where known). The real list is read into a buffer of our own,
 * so the count a too-small caller buffer gets back is this container's, not the card's. */
#define PROC_CAP 256
static nvmlReturn_t procs_out(nvmlReturn_t r, unsigned n, const unsigned char *buf, size_t stride,
                              unsigned int *count, void *out) {
    if (r != NVML_SUCCESS && r != NVML_ERROR_INSUFFICIENT_SIZE) return r;
    unsigned cap = out ? *count : 0, keep = 0;
    if (n > PROC_CAP) n = PROC_CAP;
    for (unsigned i = 0; i < n; i++) {
        const unsigned char *e = buf + stride * i;
        unsigned pid;
        memcpy(&pid, e, sizeof pid); /* pid is the first field of every version */
        if (!vgpu_region_owns_pid(pid)) continue;
        if (keep < cap) memcpy((unsigned char *)out + stride * keep, e, stride);
        keep++;
    }
    *count = keep;
    return keep > cap && (keep || out) ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}
#define PROC_LIST(name, T)                                                                       \
    nvmlReturn_t name(nvmlDevice_t device, unsigned int *infoCount, T *infos) {                  \
        vgpu_nvml_load();                                                                        \
        name##_fn f = (name##_fn)vgpu_nvml_real[NH_##name];                                      \
        if (!f) return NVML_ERROR_UNINITIALIZED;                                                 \
        if (!infoCount) return f(device, infoCount, infos);                                      \
        T buf[PROC_CAP];                                                                         \
        unsigned n = PROC_CAP;                                                                   \
        nvmlReturn_t r = f(device, &n, buf);                                                     \
        return procs_out(r, n, (const unsigned char *)buf, sizeof *buf, infoCount, infos);       \
    }
PROC_LIST(nvmlDeviceGetComputeRunningProcesses, nvmlProcessInfo_v1_t)
PROC_LIST(nvmlDeviceGetComputeRunningProcesses_v2, nvmlProcessInfo_t)
PROC_LIST(nvmlDeviceGetComputeRunningProcesses_v3, nvmlProcessInfo_t)
PROC_LIST(nvmlDeviceGetGraphicsRunningProcesses, nvmlProcessInfo_v1_t)
PROC_LIST(nvmlDeviceGetGraphicsRunningProcesses_v2, nvmlProcessInfo_t)
PROC_LIST(nvmlDeviceGetGraphicsRunningProcesses_v3, nvmlProcessInfo_t)
PROC_LIST(nvmlDeviceGetMPSComputeRunningProcesses_v3, nvmlProcessInfo_t)

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount, unsigned long long lastSeenTimeStamp) {
    vgpu_nvml_load();
    nvmlDeviceGetProcessUtilization_fn f =
        (nvmlDeviceGetProcessUtilization_fn)vgpu_nvml_real[NH_nvmlDeviceGetProcessUtilization];
    if (!f) return NVML_ERROR_UNINITIALIZED;
    if (!processSamplesCount) return f(device, utilization, processSamplesCount, lastSeenTimeStamp);
    nvmlProcessUtilizationSample_t buf[PROC_CAP];
    unsigned n = PROC_CAP;
    nvmlReturn_t r = f(device, buf, &n, lastSeenTimeStamp);
    r = procs_out(r, n, (const unsigned char *)buf, sizeof *buf, processSamplesCount, utilization);
    return r == NVML_SUCCESS && !*processSamplesCount ? NVML_ERROR_NOT_FOUND : r;
}
