/* A scriptable CUDA driver-API client for the native tests: each argument is one operation.
 * It is linked against libcuda.so.1 (the fake) and run with or without libvgpu.so preloaded. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../include/cuda_abi.h"
#include "../include/nvml_abi.h"

CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxCreate_v2(CUcontext *, unsigned, CUdevice);
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemPoolCreate(CUmemoryPool *, const CUmemPoolProps *);
CUresult cuMemPoolSetAttribute(CUmemoryPool, int, void *);
CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *, void *);
CUresult cuStreamCreate(CUstream *, unsigned);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
CUresult cuMemUnmap(CUdeviceptr, size_t);
CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
CUresult cuArrayCreate_v2(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
CUresult cuArray3DCreate_v2(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
CUresult cuArrayDestroy(CUarray);
CUresult cuMipmappedArrayCreate(CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned);
CUresult cuMipmappedArrayDestroy(CUmipmappedArray);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuLaunchKernel_ptsz(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void **, void **);
CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   CUstream, void **);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                        unsigned, CUstream, void **);
CUresult cuGraphCreate(CUgraph *, unsigned);
CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuGraphLaunch_ptsz(CUgraphExec, CUstream);
CUresult cuCtxSynchronize(void);
CUresult cuMemAlloc(CUdeviceptr_v1 *, unsigned);
CUresult cuMemAllocPitch(CUdeviceptr_v1 *, unsigned *, unsigned, unsigned, unsigned);
CUresult cuMemFree(CUdeviceptr_v1);
CUresult cuArrayCreate(CUarray *, const CUDA_ARRAY_DESCRIPTOR_v1 *);
CUresult cuArray3DCreate(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR_v1 *);
CUresult cuMemGetInfo(unsigned *, unsigned *);
CUresult cuLaunch(CUfunction);
CUresult cuLaunchGrid(CUfunction, int, int);
CUresult cuLaunchGridAsync(CUfunction, int, int, CUstream);

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
static void sleep_ms(double ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6)};
    nanosleep(&ts, NULL);
}
static size_t parse_size(const char *s) {
    char *e;
    unsigned long long v = strtoull(s, &e, 10);
    if (*e == 'k' || *e == 'K') v <<= 10;
    if (*e == 'm' || *e == 'M') v <<= 20;
    if (*e == 'g' || *e == 'G') v <<= 30;
    return (size_t)v;
}

/* ---------------------------------------------------------------- allocations by kind */
static int g_dev;
struct obj {
    int kind;
    uint64_t h, va;
    size_t size;
};
enum { LINEAR, MANAGED, PITCH, ASYNC, ASYNC_PTSZ, POOL, VMM, ARRAY, ARRAY3D, MIPMAP, CTX, V1LINEAR, V1PITCH,
       V1ARRAY, V1ARRAY3D, NKIND };
static const char *kind_names[] = {"linear", "managed", "pitch",    "async",   "async_ptsz",
                                   "pool",   "vmm",     "array",    "array3d", "mipmap",
                                   "ctx",    "v1linear", "v1pitch", "v1array", "v1array3d"};
static int kind_of(const char *s) {
    for (int i = 0; i < NKIND; i++)
        if (!strcmp(s, kind_names[i])) return i;
    fprintf(stderr, "unknown kind %s\n", s);
    exit(2);
}

static CUresult do_alloc(int kind, size_t size, struct obj *o) {
    o->kind = kind;
    o->size = size;
    o->va = 0;
    CUdeviceptr p = 0;
    CUresult r;
    switch (kind) {
    case LINEAR: r = cuMemAlloc_v2(&p, size); break;
    case MANAGED: r = cuMemAllocManaged(&p, size, 1); break;
    case PITCH: {
        size_t pitch;
        r = cuMemAllocPitch_v2(&p, &pitch, size / 1024, 1024, 4);
        break;
    }
    case ASYNC: r = cuMemAllocAsync(&p, size, NULL); break;
    case ASYNC_PTSZ: r = cuMemAllocAsync_ptsz(&p, size, NULL); break;
    case POOL: r = cuMemAllocFromPoolAsync(&p, size, NULL, NULL); break;
    case VMM: {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = 1;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = g_dev;
        CUmemGenericAllocationHandle h = 0;
        r = cuMemCreate(&h, size, &prop, 0);
        if (r == CUDA_SUCCESS) {
            CUdeviceptr va;
            cuMemAddressReserve(&va, size, 0, 0, 0);
            cuMemMap(va, size, 0, h, 0);
            o->va = va;
        }
        o->h = h;
        return r;
    }
    case ARRAY: {
        CUDA_ARRAY_DESCRIPTOR d = {size / 4096, 1024, CU_AD_FORMAT_FLOAT, 1};
        CUarray a = NULL;
        r = cuArrayCreate_v2(&a, &d);
        o->h = (uint64_t)(uintptr_t)a;
        return r;
    }
    case ARRAY3D: {
        CUDA_ARRAY3D_DESCRIPTOR d = {size / (64 * 16 * 4), 64, 16, CU_AD_FORMAT_UNSIGNED_INT8, 4, 0};
        CUarray a = NULL;
        r = cuArray3DCreate_v2(&a, &d);
        o->h = (uint64_t)(uintptr_t)a;
        return r;
    }
    case MIPMAP: {
        CUDA_ARRAY3D_DESCRIPTOR d = {size / 4096, 1024, 0, CU_AD_FORMAT_FLOAT, 1, 0};
        CUmipmappedArray m = NULL;
        r = cuMipmappedArrayCreate(&m, &d, 1);
        o->h = (uint64_t)(uintptr_t)m;
        return r;
    }
    case CTX: {
        CUcontext c = NULL, prev = NULL;
        extern CUresult cuCtxGetCurrent(CUcontext *);
        cuCtxGetCurrent(&prev);
        r = cuCtxCreate_v2(&c, 0, g_dev);
        cuCtxSetCurrent(prev);
        o->h = (uint64_t)(uintptr_t)c;
        return r;
    }
    case V1LINEAR: case V1PITCH: {
        /* the pre-3.2 API: 32-bit pointers and sizes */
        CUdeviceptr_v1 p1 = 0;
        unsigned pitch;
        r = kind == V1LINEAR ? cuMemAlloc(&p1, (unsigned)size) : cuMemAllocPitch(&p1, &pitch, (unsigned)size / 1024, 1024, 4);
        o->h = p1;
        return r;
    }
    case V1ARRAY: {
        CUDA_ARRAY_DESCRIPTOR_v1 d = {(unsigned)(size / 4096), 1024, CU_AD_FORMAT_FLOAT, 1};
        CUarray a = NULL;
        r = cuArrayCreate(&a, &d);
        o->h = (uint64_t)(uintptr_t)a;
        return r;
    }
    case V1ARRAY3D: {
        CUDA_ARRAY3D_DESCRIPTOR_v1 d = {(unsigned)(size / (64 * 16 * 4)), 64, 16, CU_AD_FORMAT_UNSIGNED_INT8, 4, 0};
        CUarray a = NULL;
        r = cuArray3DCreate(&a, &d);
        o->h = (uint64_t)(uintptr_t)a;
        return r;
    }
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    o->h = p;
    return r;
}

static CUresult do_free(struct obj *o) {
    switch (o->kind) {
    case ASYNC: case ASYNC_PTSZ: case POOL: return cuMemFreeAsync(o->h, NULL);
    case VMM: {
        /* release first, unmap second: memory must stay charged until the last mapping goes */
        CUresult r = cuMemRelease(o->h);
        if (r == CUDA_SUCCESS && o->va) r = cuMemUnmap(o->va, o->size);
        return r;
    }
    case V1LINEAR: case V1PITCH: return cuMemFree((CUdeviceptr_v1)o->h);
    case ARRAY: case ARRAY3D: case V1ARRAY: case V1ARRAY3D: return cuArrayDestroy((CUarray)(uintptr_t)o->h);
    case MIPMAP: return cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)o->h);
    case CTX: return cuCtxDestroy_v2((CUcontext)(uintptr_t)o->h);
    default: return cuMemFree_v2(o->h);
    }
}

#define MAXOBJ 4096
static struct obj g_objs[MAXOBJ];
static int g_nobj;
static CUcontext g_ctx;

static void need_ctx(void) {
    if (g_ctx) return;
    cuInit(0);
    CUresult r = cuDevicePrimaryCtxRetain(&g_ctx, g_dev);
    if (r) {
        printf("ctx rc=%d\n", r);
        fflush(stdout);
        exit(3);
    }
    cuCtxSetCurrent(g_ctx);
}

/* ---------------------------------------------------------------- cross-process barrier */
static _Atomic long *g_bar;
static int g_bar_n;
static long g_bar_gen;
static void barrier_open(const char *path, int n) {
    int fd = open(path, O_RDWR | O_CREAT, 0666);
    if (fd < 0 || ftruncate(fd, 4096) < 0) exit(4);
    g_bar = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    g_bar_n = n;
}
static void barrier(void) {
    g_bar_gen++;
    atomic_fetch_add(g_bar, 1);
    long target = g_bar_gen * g_bar_n;
    uint64_t t0 = now_ns();
    while (atomic_load(g_bar) < target) {
        if (now_ns() - t0 > 20000000000ULL) {
            printf("barrier timeout\n");
            exit(5);
        }
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

/* ---------------------------------------------------------------- threads */
/* ---------------------------------------------------------------- pools and streams */
#define MAXPOOL 256
static CUmemoryPool g_pools[MAXPOOL];
static int g_npools;
static CUstream g_stream;
static CUmemGenericAllocationHandle g_retained;
static size_t g_race_size;
static void *race_thr(void *p) { /* one stream-ordered allocation, kept */
    CUdeviceptr d = 0;
    *(CUresult *)p = cuMemAllocAsync(&d, g_race_size, NULL);
    return NULL;
}

struct targ {
    long n;
    size_t size;
    long fails;
};
static void *thr(void *p) {
    struct targ *a = p;
    cuCtxSetCurrent(g_ctx);
    for (long i = 0; i < a->n; i++) {
        struct obj o;
        int kind = (int)(i % 4 == 3 ? ASYNC : LINEAR);
        if (do_alloc(kind, a->size, &o) != CUDA_SUCCESS) {
            a->fails++;
            continue;
        }
        do_free(&o);
    }
    return NULL;
}

typedef uint64_t (*busy_fn)(int, int);

struct lctx {
    const char *mode;
    uint64_t deadline;
    CUfunction f;
    CUgraphExec ge;
    uint64_t ns;
    long n;
};
static CUresult launch_one(const char *mode, CUfunction f, CUgraphExec ge, void **params, CUlaunchConfig *cfg) {
    if (!strcmp(mode, "kernel")) return cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL);
    if (!strcmp(mode, "ptsz")) return cuLaunchKernel_ptsz(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL);
    if (!strcmp(mode, "ex")) return cuLaunchKernelEx(cfg, f, params, NULL);
    if (!strcmp(mode, "coop")) return cuLaunchCooperativeKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, params);
    if (!strcmp(mode, "coop_ptsz")) return cuLaunchCooperativeKernel_ptsz(f, 1, 1, 1, 1, 1, 1, 0, NULL, params);
    if (!strcmp(mode, "graph")) return cuGraphLaunch(ge, NULL);
    if (!strcmp(mode, "graph_ptsz")) return cuGraphLaunch_ptsz(ge, NULL);
    /* the legacy API: kernel length from FAKECUDA_KERNEL_NS */
    if (!strcmp(mode, "legacy")) return cuLaunch(f);
    if (!strcmp(mode, "grid")) return cuLaunchGrid(f, 1, 1);
    if (!strcmp(mode, "grid_async")) return cuLaunchGridAsync(f, 1, 1, NULL);
    printf("bad mode %s\n", mode);
    exit(2);
}
static void *launch_thread(void *p) {
    struct lctx *c = p;
    cuCtxSetCurrent(g_ctx);
    void *params[] = {&c->ns};
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    while (now_ns() < c->deadline) {
        if (launch_one(c->mode, c->f, c->ge, params, &cfg)) exit(7);
        c->n++;
    }
    return NULL;
}

static void launch_loop(const char *mode, double secs, uint64_t kns, double warm, int nthreads) {
    need_ctx();
    CUmodule m;
    CUfunction f;
    cuModuleLoadData(&m, "kernel busy");
    cuModuleGetFunction(&f, m, "busy");
    CUgraph g;
    CUgraphExec ge;
    cuGraphCreate(&g, 0);
    cuGraphInstantiateWithFlags(&ge, g, 0);
    uint64_t ns = kns;
    void *params[] = {&ns};
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDimX = cfg.blockDimX = 1;
    busy_fn busy = (busy_fn)dlsym(RTLD_DEFAULT, "fakecuda_busy_ns");
    if (!busy) {
        printf("no fakecuda_busy_ns\n");
        exit(6);
    }
    if (nthreads > 1) {
        /* several threads launching at once through one shared bucket */
        pthread_t t[16];
        struct lctx c[16];
        sleep_ms(warm * 1000);
        uint64_t t0 = now_ns(), b0 = busy(getpid(), 0);
        for (int k = 0; k < nthreads && k < 16; k++) {
            c[k] = (struct lctx){mode, t0 + (uint64_t)(secs * 1e9), f, ge, kns, 0};
            pthread_create(&t[k], NULL, launch_thread, &c[k]);
        }
        long total = 0;
        for (int k = 0; k < nthreads && k < 16; k++) {
            pthread_join(t[k], NULL);
            total += c[k].n;
        }
        uint64_t t1 = now_ns(), b1 = busy(getpid(), 0);
        printf("launch mode=%s util=%.2f launches=%ld secs=%.2f threads=%d\n", mode,
               100.0 * (double)(b1 - b0) / (double)(t1 - t0), total, (double)(t1 - t0) / 1e9, nthreads);
        return;
    }
    uint64_t t_start = now_ns(), t0 = 0, b0 = 0;
    long launches = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (!t0 && now - t_start >= (uint64_t)(warm * 1e9)) {
            t0 = now;
            b0 = busy(getpid(), 0);
            launches = 0;
        }
        if (t0 && now - t0 >= (uint64_t)(secs * 1e9)) break;
        /* "mixed": kernels of three sizes in a fixed pattern (1x, 1/10x, 3x the given length) */
        if (!strcmp(mode, "mixed")) ns = launches % 3 == 0 ? kns : launches % 3 == 1 ? kns / 10 : kns * 3;
        /* "phase": 1/10x kernels for the first half of the run, then 3x kernels */
        if (!strcmp(mode, "phase")) ns = (t0 && now - t0 < (uint64_t)(secs * 0.5e9)) || !t0 ? kns / 10 : kns * 3;
        int plain = !strcmp(mode, "mixed") || !strcmp(mode, "phase");
        CUresult r = launch_one(plain ? "kernel" : mode, f, ge, params, &cfg);
        if (r) {
            printf("launch rc=%d\n", r);
            exit(7);
        }
        launches++;
    }
    uint64_t t1 = now_ns(), b1 = busy(getpid(), 0);
    extern CUresult cuModuleUnload(CUmodule);
    extern CUresult cuGraphExecDestroy(CUgraphExec);
    extern CUresult cuGraphDestroy(CUgraph);
    cuGraphExecDestroy(ge);
    cuGraphDestroy(g);
    cuModuleUnload(m);
    printf("launch mode=%s util=%.2f launches=%ld secs=%.2f\n", mode, 100.0 * (double)(b1 - b0) / (double)(t1 - t0),
           launches, (double)(t1 - t0) / 1e9);
}

/* ---------------------------------------------------------------- load patterns for the limiter */
static CUfunction g_kf;
static busy_fn g_busy;
static uint64_t g_kns;
static void kernel_setup(uint64_t kns) {
    need_ctx();
    CUmodule m;
    cuModuleLoadData(&m, "kernel busy");
    cuModuleGetFunction(&g_kf, m, "busy");
    g_busy = (busy_fn)dlsym(RTLD_DEFAULT, "fakecuda_busy_ns");
    if (!g_busy) {
        printf("no fakecuda_busy_ns\n");
        exit(6);
    }
    g_kns = kns;
}
static void kernel_once(void) {
    void *params[] = {&g_kns};
    CUresult r = cuLaunchKernel(g_kf, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL);
    if (r) {
        printf("launch rc=%d\n", r);
        exit(7);
    }
}
/* GPU utilisation (%) of this process between two (time, busy) marks */
struct mark {
    uint64_t t, b;
};
static struct mark mark_now(void) { return (struct mark){now_ns(), g_busy(getpid(), 0)}; }
static double util_between(struct mark a, struct mark b) { return 100.0 * (double)(b.b - a.b) / (double)(b.t - a.t); }

/* "duty": a training loop with host work: <n> launches, then <host_ms> on the CPU (the GPU idles
 * unless the launches are still queued), for <secs1> s; then launching without pause for <secs2> s.
 * Prints the utilisation of the duty phase (after its first <warm> s) and of the last <tail> s. */
static void duty_loop(double secs1, double secs2, uint64_t kns, long n, double host_ms, double tail, double warm) {
    kernel_setup(kns);
    uint64_t t_start = now_ns(), end1 = t_start + (uint64_t)(secs1 * 1e9), end2 = end1 + (uint64_t)(secs2 * 1e9);
    struct mark a = {0, 0}, b, c = {0, 0};
    while (now_ns() < end1) {
        if (!a.t && now_ns() - t_start >= (uint64_t)(warm * 1e9)) a = mark_now();
        for (long k = 0; k < n; k++) kernel_once();
        sleep_ms(host_ms);
    }
    b = mark_now();
    for (uint64_t now = now_ns(); now < end2; now = now_ns()) {
        if (!c.t && now >= end2 - (uint64_t)(tail * 1e9)) c = mark_now();
        kernel_once();
    }
    struct mark d = mark_now();
    printf("duty util=%.2f tail=%.2f\n", a.t ? util_between(a, b) : -1.0, c.t ? util_between(c, d) : -1.0);
}

/* "paced": launching <kns> kernels without pause for <secs> s. Prints the utilisation between the
 * first launch that returns after <warm> s and the last one: whole cycles of (wait, kernel), so a
 * kernel longer than the window's share does not skew the figure by where the window ends. */
static void paced_loop(uint64_t kns, double secs, double warm) {
    kernel_setup(kns);
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(secs * 1e9), w = t0 + (uint64_t)(warm * 1e9);
    struct mark a = {0, 0};
    long n = 0;
    for (;;) {
        kernel_once();
        uint64_t now = now_ns();
        if (!a.t && now >= w) a = mark_now();
        else if (a.t) n++;
        if (now >= end) break;
    }
    struct mark b = mark_now();
    printf("paced util=%.2f launches=%ld\n", a.t && n ? util_between(a, b) : -1.0, n);
}

/* "idleburst": 1 s of steady launching (the controller learns the cost), then <cycles> times: idle
 * for <idle_ms>, then launch without pause for <window_ms>. Prints each window's utilisation. */
static void idle_burst(uint64_t kns, double idle_ms, double window_ms, int cycles) {
    kernel_setup(kns);
    for (uint64_t end = now_ns() + 1000000000ULL; now_ns() < end;) kernel_once();
    printf("idleburst");
    for (int k = 0; k < cycles; k++) {
        cuCtxSynchronize();
        sleep_ms(idle_ms);
        struct mark a = mark_now();
        for (uint64_t end = a.t + (uint64_t)(window_ms * 1e6); now_ns() < end;) kernel_once();
        printf(" %.2f", util_between(a, mark_now()));
    }
    printf("\n");
}

typedef nvmlReturn_t (*nvml0)(void);
typedef nvmlReturn_t (*nvmlh)(unsigned, nvmlDevice_t *);
typedef nvmlReturn_t (*nvmlm)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*nvmlm2)(nvmlDevice_t, nvmlMemory_v2_t *);

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char op[512];
        snprintf(op, sizeof op, "%s", argv[i]);
        char *a[8] = {0};
        int na = 0;
        for (char *s = NULL, *t = strtok_r(op, ":", &s); t && na < 8; t = strtok_r(NULL, ":", &s)) a[na++] = t;
        if (!na) continue;
        if (!strcmp(a[0], "init")) {
            printf("init rc=%d\n", cuInit(0));
        } else if (!strcmp(a[0], "dev")) {
            /* switch to device N's primary context */
            g_dev = atoi(a[1]);
            g_ctx = NULL;
            need_ctx();
            printf("dev %d\n", g_dev);
        } else if (!strcmp(a[0], "ctx")) {
            need_ctx();
            printf("ctx ok\n");
        } else if (!strcmp(a[0], "alloc")) {
            need_ctx();
            struct obj o;
            CUresult r = do_alloc(kind_of(a[1]), parse_size(a[2]), &o);
            if (r == CUDA_SUCCESS && g_nobj < MAXOBJ) g_objs[g_nobj++] = o;
            printf("alloc %s %s rc=%d id=%d\n", a[1], a[2], r, r == CUDA_SUCCESS ? g_nobj - 1 : -1);
        } else if (!strcmp(a[0], "free")) {
            int id = atoi(a[1]);
            printf("free %d rc=%d\n", id, do_free(&g_objs[id]));
            g_objs[id].kind = -1;
        } else if (!strcmp(a[0], "freeall")) {
            int bad = 0;
            for (int k = 0; k < g_nobj; k++)
                if (g_objs[k].kind >= 0 && do_free(&g_objs[k]) != CUDA_SUCCESS) bad++;
            g_nobj = 0;
            printf("freeall bad=%d\n", bad);
        } else if (!strcmp(a[0], "poolthreshold")) {
            /* the release threshold of the current device's default pool ("max" keeps everything) */
            extern CUresult cuDeviceGetMemPool(CUmemoryPool *, CUdevice);
            extern CUresult cuMemPoolSetAttribute(CUmemoryPool, int, void *);
            need_ctx();
            CUmemoryPool pool;
            cuuint64_t v = !strcmp(a[1], "max") ? UINT64_MAX : parse_size(a[1]);
            CUresult r = cuDeviceGetMemPool(&pool, g_dev);
            if (!r) r = cuMemPoolSetAttribute(pool, 4, &v);
            printf("poolthreshold rc=%d\n", r);
        } else if (!strcmp(a[0], "poolcreate")) {
            /* <n> pools on the current device, each keeping what is freed ("max" release threshold) */
            need_ctx();
            int n = atoi(a[1]), fails = 0;
            for (int k = 0; k < n && g_npools < MAXPOOL; k++) {
                CUmemPoolProps pp;
                memset(&pp, 0, sizeof pp);
                pp.allocType = 1;
                pp.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
                pp.location.id = g_dev;
                cuuint64_t v = UINT64_MAX;
                if (cuMemPoolCreate(&g_pools[g_npools], &pp) || cuMemPoolSetAttribute(g_pools[g_npools], 4, &v)) fails++;
                else g_npools++;
            }
            printf("poolcreate n=%d fails=%d\n", g_npools, fails);
        } else if (!strcmp(a[0], "poolcycle")) {
            /* allocate <size> from every created pool and free it (it stays in the pool's cache) */
            need_ctx();
            int fails = 0;
            for (int k = 0; k < g_npools; k++) {
                CUdeviceptr d = 0;
                if (cuMemAllocFromPoolAsync(&d, parse_size(a[1]), g_pools[k], NULL) || cuMemFreeAsync(d, NULL)) fails++;
            }
            printf("poolcycle fails=%d\n", fails);
        } else if (!strcmp(a[0], "poolalloc")) {
            /* <size> from created pool <k>, kept as an object */
            need_ctx();
            struct obj o = {POOL, 0, 0, parse_size(a[2])};
            CUdeviceptr d = 0;
            CUresult r = cuMemAllocFromPoolAsync(&d, o.size, g_pools[atoi(a[1])], NULL);
            o.h = d;
            if (r == CUDA_SUCCESS && g_nobj < MAXOBJ) g_objs[g_nobj++] = o;
            printf("alloc poolalloc %s rc=%d\n", a[2], r);
        } else if (!strcmp(a[0], "stream")) {
            need_ctx();
            printf("stream rc=%d\n", cuStreamCreate(&g_stream, 0));
        } else if (!strcmp(a[0], "allocstream")) {
            /* cuMemAllocAsync of <size> on the stream made by "stream", kept as an object */
            need_ctx();
            struct obj o = {ASYNC, 0, 0, parse_size(a[1])};
            CUdeviceptr d = 0;
            CUresult r = cuMemAllocAsync(&d, o.size, g_stream);
            o.h = d;
            if (r == CUDA_SUCCESS && g_nobj < MAXOBJ) g_objs[g_nobj++] = o;
            printf("alloc allocstream %s rc=%d\n", a[1], r);
        } else if (!strcmp(a[0], "paced")) {
            paced_loop(parse_size(a[1]), atof(a[2]), atof(a[3]));
        } else if (!strcmp(a[0], "poolrace")) {
            /* two threads allocate <size> stream-ordered at once */
            need_ctx();
            g_race_size = parse_size(a[1]);
            pthread_t t[2];
            CUresult rc[2];
            for (int k = 0; k < 2; k++) pthread_create(&t[k], NULL, race_thr, &rc[k]);
            for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
            printf("poolrace ok=%d\n", (rc[0] == CUDA_SUCCESS) + (rc[1] == CUDA_SUCCESS));
        } else if (!strcmp(a[0], "retain")) {
            /* a second reference to the handle behind object <id>'s mapping */
            printf("retain rc=%d\n", cuMemRetainAllocationHandle(&g_retained, (void *)(uintptr_t)g_objs[atoi(a[1])].va));
        } else if (!strcmp(a[0], "releaseretained")) {
            printf("releaseretained rc=%d\n", cuMemRelease(g_retained));
        } else if (!strcmp(a[0], "pid")) {
            printf("pid pid=%d\n", (int)getpid());
        } else if (!strcmp(a[0], "info")) {
            need_ctx();
            size_t fr = 0, tot = 0;
            CUresult r = cuMemGetInfo_v2(&fr, &tot);
            printf("info rc=%d free=%zu total=%zu\n", r, fr, tot);
        } else if (!strcmp(a[0], "info1")) {
            need_ctx();
            unsigned fr = 0, tot = 0;
            CUresult r = cuMemGetInfo(&fr, &tot);
            printf("info1 rc=%d free=%u total=%u\n", r, fr, tot);
        } else if (!strcmp(a[0], "totalmem")) {
            need_ctx();
            size_t t = 0;
            CUresult r = cuDeviceTotalMem_v2(&t, g_dev);
            printf("totalmem rc=%d total=%zu\n", r, t);
        } else if (!strcmp(a[0], "release")) {
            printf("release rc=%d\n", cuDevicePrimaryCtxRelease_v2(0));
            g_ctx = NULL;
        } else if (!strcmp(a[0], "nvml")) {
            void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
            if (!h) {
                printf("nvml unavailable\n");
                continue;
            }
            nvml0 init = (nvml0)dlsym(h, "nvmlInit_v2");
            nvmlh get = (nvmlh)dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
            nvmlm mem = (nvmlm)dlsym(h, "nvmlDeviceGetMemoryInfo");
            nvmlm2 mem2 = (nvmlm2)dlsym(h, "nvmlDeviceGetMemoryInfo_v2");
            nvmlDevice_t d;
            init();
            get((unsigned)g_dev, &d);
            nvmlMemory_t m;
            nvmlReturn_t r = mem(d, &m);
            nvmlMemory_v2_t m2;
            m2.version = NVML_MEMORY_V2_VERSION;
            nvmlReturn_t r2 = mem2(d, &m2);
            printf("nvml rc=%d total=%llu used=%llu free=%llu rc2=%d total2=%llu used2=%llu free2=%llu\n", r,
                   m.total, m.used, m.free, r2, m2.total, m2.used, m2.free);
        } else if (!strcmp(a[0], "procs")) {
            /* NVML's compute process list of device 0 (v3 and v1) as this process sees it */
            need_ctx();
            void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
            typedef nvmlReturn_t (*plist)(nvmlDevice_t, unsigned *, void *);
            plist v3 = h ? (plist)dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3") : NULL;
            plist v1 = h ? (plist)dlsym(h, "nvmlDeviceGetComputeRunningProcesses") : NULL;
            if (!v3 || !v1) {
                printf("procs unavailable\n");
                continue;
            }
            ((nvml0)dlsym(h, "nvmlInit_v2"))();
            nvmlDevice_t d;
            ((nvmlh)dlsym(h, "nvmlDeviceGetHandleByIndex_v2"))(0, &d);
            nvmlProcessInfo_t p3[64];
            nvmlProcessInfo_v1_t p1[64];
            unsigned n3 = 64, n1 = 64, n0 = 0;
            nvmlReturn_t r3 = v3(d, &n3, p3), r1 = v1(d, &n1, p1), r0 = v3(d, &n0, NULL);
            unsigned long long mem = 0;
            for (unsigned k = 0; k < n3 && k < 64; k++) mem += p3[k].usedGpuMemory;
            plist g3 = (plist)dlsym(h, "nvmlDeviceGetGraphicsRunningProcesses_v3");
            unsigned ng = 64;
            nvmlReturn_t rg = g3 ? g3(d, &ng, p3) : (nvmlReturn_t)-1;
            typedef nvmlReturn_t (*putil)(nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned *,
                                          unsigned long long);
            putil pu = (putil)dlsym(h, "nvmlDeviceGetProcessUtilization");
            nvmlProcessUtilizationSample_t us[64];
            unsigned nu = 64;
            nvmlReturn_t ru = pu ? pu(d, us, &nu, 0) : (nvmlReturn_t)-1;
            printf("procs rc=%d n=%u rc1=%d n1=%u rc0=%d n0=%u mem=%llu rcg=%d ng=%u rcu=%d nu=%u\n", r3, n3, r1, n1,
                   r0, n0, mem, rg, ng, ru, ru == 0 ? nu : 0);
        } else if (!strcmp(a[0], "cycles")) {
            need_ctx();
            long n = atol(a[1]), fails = 0;
            size_t size = parse_size(a[2]);
            for (long k = 0; k < n; k++) {
                struct obj o;
                int kind = (int)(k % 16 == 15 ? (k / 16) % 10 : LINEAR); /* mostly linear, every kind */
                if (do_alloc(kind, size, &o) != CUDA_SUCCESS || do_free(&o) != CUDA_SUCCESS) fails++;
            }
            printf("cycles n=%ld fails=%ld\n", n, fails);
        } else if (!strcmp(a[0], "threads")) {
            need_ctx();
            int nt = atoi(a[1]);
            pthread_t t[64];
            struct targ ta[64];
            for (int k = 0; k < nt && k < 64; k++) {
                ta[k] = (struct targ){atol(a[2]), parse_size(a[3]), 0};
                pthread_create(&t[k], NULL, thr, &ta[k]);
            }
            long fails = 0;
            for (int k = 0; k < nt && k < 64; k++) {
                pthread_join(t[k], NULL);
                fails += ta[k].fails;
            }
            printf("threads fails=%ld\n", fails);
        } else if (!strcmp(a[0], "fork")) {
            pid_t p = fork();
            if (p == 0) {
                /* the child charges its own slot and exits without freeing */
                g_ctx = NULL;
                need_ctx();
                struct obj o;
                CUresult r = do_alloc(LINEAR, parse_size(a[1]), &o);
                printf("child alloc rc=%d\n", r);
                _exit(r == CUDA_SUCCESS ? 0 : 1);
            }
            int st;
            waitpid(p, &st, 0);
            printf("fork child exit=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        } else if (!strcmp(a[0], "barrier_open")) {
            barrier_open(a[1], atoi(a[2]));
        } else if (!strcmp(a[0], "race")) {
            need_ctx();
            int rounds = atoi(a[1]);
            size_t size = parse_size(a[2]);
            for (int k = 0; k < rounds; k++) {
                barrier();
                CUdeviceptr p = 0;
                CUresult r = cuMemAlloc_v2(&p, size);
                barrier();
                printf("round %d rc=%d\n", k, r);
                if (r == CUDA_SUCCESS) cuMemFree_v2(p);
                barrier();
            }
        } else if (!strcmp(a[0], "ready")) {
            int fd = open(a[1], O_CREAT | O_WRONLY, 0644);
            close(fd);
        } else if (!strcmp(a[0], "waitfile")) {
            struct stat st;
            while (stat(a[1], &st) != 0) sleep_ms(1);
        } else if (!strcmp(a[0], "sleep")) {
            sleep_ms(atof(a[1]));
        } else if (!strcmp(a[0], "hammer")) {
            /* allocate and free forever from several threads, for kill -9 tests */
            need_ctx();
            struct targ ta[4];
            pthread_t t[4];
            for (int k = 0; k < 4; k++) {
                ta[k] = (struct targ){1L << 40, parse_size(a[1]), 0};
                pthread_create(&t[k], NULL, thr, &ta[k]);
            }
            printf("hammering\n");
            for (;;) sleep_ms(1000);
        } else if (!strcmp(a[0], "pollfree")) {
            need_ctx();
            size_t want = parse_size(a[1]);
            double timeout = atof(a[2]);
            uint64_t t0 = now_ns();
            size_t fr = 0, tot = 0;
            for (;;) {
                cuMemGetInfo_v2(&fr, &tot);
                double ms = (double)(now_ns() - t0) / 1e6;
                if (fr >= want) {
                    printf("pollfree ok ms=%.1f free=%zu\n", ms, fr);
                    break;
                }
                if (ms > timeout) {
                    printf("pollfree timeout free=%zu\n", fr);
                    break;
                }
                sleep_ms(2);
            }
        } else if (!strcmp(a[0], "launch")) {
            launch_loop(a[1], atof(a[2]), parse_size(a[3]), na > 4 ? atof(a[4]) : 0, na > 5 ? atoi(a[5]) : 1);
        } else if (!strcmp(a[0], "duty")) {
            duty_loop(atof(a[1]), atof(a[2]), parse_size(a[3]), atol(a[4]), atof(a[5]), atof(a[6]),
                      na > 7 ? atof(a[7]) : 1.0);
        } else if (!strcmp(a[0], "idleburst")) {
            idle_burst(parse_size(a[1]), atof(a[2]), atof(a[3]), atoi(a[4]));
        } else if (!strcmp(a[0], "sync")) {
            printf("sync rc=%d\n", cuCtxSynchronize());
        } else {
            fprintf(stderr, "unknown op %s\n", a[0]);
            return 2;
        }
    }
    return 0;
}
