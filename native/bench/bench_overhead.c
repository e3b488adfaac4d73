/* Per-call latency of cuLaunchKernel and cuMemAlloc+cuMemFree against the fake driver. Run the same
 * binary with and without LD_PRELOAD=libvgpu.so; benchmarks/native_overhead.py does both and
 * reports the difference. Prints one line per batch: "<op> <ns per call>". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../include/cuda_abi.h"

CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int batches = argc > 1 ? atoi(argv[1]) : 200;
    int per = argc > 2 ? atoi(argv[2]) : 20000;
    double warm = argc > 3 ? atof(argv[3]) : 0.5; /* seconds of launches before measuring */
    CUcontext c;
    CUmodule m;
    CUfunction f;
    cuInit(0);
    cuDevicePrimaryCtxRetain(&c, 0);
    cuCtxSetCurrent(c);
    cuModuleLoadData(&m, "bench");
    cuModuleGetFunction(&f, m, "noop");
    for (double t = now(); now() - t < warm * 1e9;)
        for (int i = 0; i < 1000; i++) cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    for (int b = 0; b < batches; b++) {
        double t0 = now();
        for (int i = 0; i < per; i++)
            if (cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL)) return 1;
        double t1 = now();
        for (int i = 0; i < per / 10; i++) {
            CUdeviceptr p;
            if (cuMemAlloc_v2(&p, 4096) || cuMemFree_v2(p)) return 1;
        }
        double t2 = now();
        printf("launch %.2f\nallocfree %.2f\n", (t1 - t0) / per, (t2 - t1) / (per / 10));
    }
    return 0;
}
