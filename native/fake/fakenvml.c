/* Fake libnvidia-ml.so.1: reads the same simulated device state as the fake libcuda.so.1. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../include/nvml_abi.h"
#include "fake_state.h"

#define API __attribute__((visibility("default")))

struct nvmlDevice_st {
    int idx;
};
static struct nvmlDevice_st g_devs[FK_MAX_DEV] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};
static _Atomic int g_init;

static int dev_of(nvmlDevice_t d) {
    if (!atomic_load(&g_init) || !d || d < g_devs || d >= g_devs + FK_MAX_DEV) return -1;
    return (unsigned)d->idx < fk_state()->ndev ? d->idx : -1;
}
#define DEV(d)                                                                                   \
    int di_ = dev_of(d);                                                                         \
    if (di_ < 0) return atomic_load(&g_init) ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED

API nvmlReturn_t nvmlInit_v2(void) {
    if (fk_fault("nvmlInit_v2")) return NVML_ERROR_UNKNOWN;
    fk_state();
    atomic_fetch_add(&g_init, 1);
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}
API nvmlReturn_t nvmlShutdown(void) {
    if (atomic_load(&g_init) > 0) atomic_fetch_sub(&g_init, 1);
    return NVML_SUCCESS;
}
API const char *nvmlErrorString(nvmlReturn_t r) { return r ? "fake NVML error" : "Success"; }
API nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int n) {
    snprintf(v, n, "999.99");
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    if (!atomic_load(&g_init)) return NVML_ERROR_UNINITIALIZED;
    *n = fk_state()->ndev;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (!atomic_load(&g_init)) return NVML_ERROR_UNINITIALIZED;
    if (i >= fk_state()->ndev) return NVML_ERROR_INVALID_ARGUMENT;
    *d = &g_devs[i];
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *i) {
    DEV(d);
    *i = (unsigned)di_;
    return NVML_SUCCESS;
}
static void uuid(int d, char *out, unsigned n) {
    const struct fk_card *cards;
    if (d < fk_cards(&cards)) { /* a simulated node's own card (FAKECUDA_CARDS) */
        snprintf(out, n, "%s", cards[d].uuid);
        return;
    }
    /* same bytes as the fake CUDA side: fa ce 00.. d */
    snprintf(out, n, "GPU-face0000-0000-0000-0000-0000000000%02x", d);
}
API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *out, unsigned int n) {
    DEV(d);
    uuid(di_, out, n);
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *u, nvmlDevice_t *d) {
    if (!atomic_load(&g_init)) return NVML_ERROR_UNINITIALIZED;
    char buf[96];
    for (unsigned i = 0; i < fk_state()->ndev; i++) {
        uuid((int)i, buf, sizeof buf);
        if (!strcmp(buf, u)) {
            *d = &g_devs[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}
API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *out, unsigned int n) {
    DEV(d);
    const struct fk_card *cards;
    if (di_ < fk_cards(&cards)) snprintf(out, n, "%s", cards[di_].name);
    else snprintf(out, n, "Fake GPU %d", di_);
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    DEV(d);
    struct fk_state *S = fk_state();
    fk_reap(S);
    m->total = S->dev[di_].total;
    m->used = atomic_load(&S->dev[di_].used);
    if (m->used > m->total) m->used = m->total;
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    if (!m || m->version != NVML_MEMORY_V2_VERSION) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlMemory_t v1;
    nvmlReturn_t r = nvmlDeviceGetMemoryInfo(d, &v1);
    if (r) return r;
    m->total = v1.total;
    m->reserved = 0;
    m->used = v1.used;
    m->free = v1.free;
    return NVML_SUCCESS;
}

static nvmlReturn_t procs(nvmlDevice_t d, unsigned int *count, void *out, size_t stride) {
    DEV(d);
    struct fk_state *S = fk_state();
    fk_reap(S);
    unsigned n = 0, cap = *count;
    for (int i = 0; i < FK_MAX_PROC; i++) {
        struct fk_proc *p = &S->proc[i];
        int32_t pid = atomic_load(&p->pid);
        uint64_t mem = atomic_load(&p->mem[di_]);
        if (pid <= 0 || !mem) continue;
        if (out && n < cap) {
            nvmlProcessInfo_t *e = (nvmlProcessInfo_t *)((char *)out + stride * n);
            memset(e, 0, stride);
            e->pid = (unsigned)pid;
            e->usedGpuMemory = mem;
        }
        n++;
    }
    *count = n;
    return n > cap ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *o) {
    return procs(d, c, o, sizeof *o);
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(d, c, o, sizeof *o);
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(d, c, o, sizeof *o);
}
/* the fake lists every process in every list */
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *o) {
    return procs(d, c, o, sizeof *o);
}
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(d, c, o, sizeof *o);
}
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(d, c, o, sizeof *o);
}
API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(d, c, o, sizeof *o);
}

/* FAKECUDA_NVML_HANG=<path>: the call blocks while that file exists (a driver call that hangs) */
static void hang_while_flagged(void) {
    const char *path = getenv("FAKECUDA_NVML_HANG");
    struct timespec ts = {0, 10000000};
    while (path && *path && access(path, F_OK) == 0) nanosleep(&ts, NULL);
}

/* one sample per process that ran kernels in (lastSeen, now]: its exact share of that window */
API nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *s,
                                                 unsigned int *count, unsigned long long lastSeen) {
    DEV(d);
    if (fk_fault("nvmlDeviceGetProcessUtilization")) return NVML_ERROR_UNKNOWN;
    hang_while_flagged();
    struct fk_state *S = fk_state();
    uint64_t now = fk_mono_ns(), rt = fk_real_us();
    uint64_t back_us = lastSeen && lastSeen < rt ? rt - lastSeen : 1000000;
    if (back_us > 10000000) back_us = 10000000;
    if (back_us < 1000) back_us = 1000;
    uint64_t t0 = now - back_us * 1000;
    unsigned n = 0, cap = s ? *count : 0;
    for (int i = 0; i < FK_MAX_PROC; i++) {
        struct fk_proc *p = &S->proc[i];
        int32_t pid = atomic_load(&p->pid);
        if (pid <= 0) continue;
        uint64_t busy = fk_busy_between(p, di_, t0, now);
        if (!busy) continue;
        if (n < cap) {
            s[n].pid = (unsigned)pid;
            s[n].timeStamp = rt;
            double util = (double)busy * 100.0 / (double)(now - t0);
            const struct fk_noise *N = fk_noise();
            if (N->nvml > 0) { /* NVML samples the SMs; its figure is not the exact kernel time */
                static _Atomic uint64_t draws;
                util *= 1.0 + N->nvml * fk_draw(0x9e31ULL + (uint64_t)pid, atomic_fetch_add(&draws, 1));
            }
            s[n].smUtil = util >= 100.0 ? 100u : (unsigned)(util + 0.5);
            s[n].memUtil = s[n].encUtil = s[n].decUtil = 0;
        }
        n++;
    }
    if (!s) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n < cap ? n : cap;
    if (!n) return NVML_ERROR_NOT_FOUND;
    return n > cap ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    DEV(d);
    struct fk_state *S = fk_state();
    uint64_t now = fk_mono_ns(), t0 = now - 1000000000ULL, busy = 0;
    for (int i = 0; i < FK_MAX_PROC; i++)
        if (atomic_load(&S->proc[i].pid) > 0) busy += fk_busy_between(&S->proc[i], di_, t0, now);
    u->gpu = (unsigned)(busy * 100 / 1000000000ULL);
    if (u->gpu > 100) u->gpu = 100;
    u->memory = 0;
    return NVML_SUCCESS;
}
