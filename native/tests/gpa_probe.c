/* Does what the CUDA runtime does: dlopen("libcuda.so.1"), dlsym("cuGetProcAddress_v2"), then asks
 * for entry points at several CUDA versions and stream flags. Prints, for each request, which
 * object and which exported symbol the returned pointer is (via dladdr). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../include/cuda_abi.h"

typedef CUresult (*gpa2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
typedef CUresult (*gpa1_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*init_fn)(unsigned);
typedef CUresult (*retain_fn)(CUcontext *, CUdevice);
typedef CUresult (*setcur_fn)(CUcontext);
typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);

static const char *who(void *p, char *buf, size_t n) {
    Dl_info di;
    if (!p) return "NULL";
    if (!dladdr(p, &di) || !di.dli_fname) return "?";
    const char *lib = strrchr(di.dli_fname, '/');
    lib = lib ? lib + 1 : di.dli_fname;
    snprintf(buf, n, "%s:%s", lib, di.dli_sname ? di.dli_sname : "?");
    return buf;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    char buf[256];
    if (argc > 1 && !strcmp(argv[1], "next")) {
        const char *(*f)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "nexttest");
        printf("next %s\n", f ? f() : "missing");
        return 0;
    }
    const char *late = getenv("PROBE_LIBCUDA");
    if (late) /* a lookup before the driver is loadable by soname, then dlopen by absolute path */
        printf("early dlsym cuInit -> %s\n", who(dlsym(RTLD_DEFAULT, "cuInit"), buf, sizeof buf));
    void *h = dlopen(late ? late : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    gpa2_fn gpa2 = (gpa2_fn)dlsym(h, "cuGetProcAddress_v2");
    gpa1_fn gpa1 = (gpa1_fn)dlsym(h, "cuGetProcAddress");
    printf("dlsym cuGetProcAddress_v2 -> %s\n", who((void *)gpa2, buf, sizeof buf));
    printf("dlsym cuGetProcAddress -> %s\n", who((void *)gpa1, buf, sizeof buf));
    printf("dlsym cuMemAlloc_v2 -> %s\n", who(dlsym(h, "cuMemAlloc_v2"), buf, sizeof buf));
    printf("dlsym cuDeviceGetName -> %s\n", who(dlsym(h, "cuDeviceGetName"), buf, sizeof buf));
    void *none = dlsym(h, "cuNoSuchFunction");
    printf("dlsym cuNoSuchFunction -> %s err=%s\n", who(none, buf, sizeof buf), dlerror() ? "yes" : "no");
    if (!gpa2) return 1;
    init_fn init = NULL;
    CUdriverProcAddressQueryResult st;
    gpa2("cuInit", (void **)&init, 12000, 0, &st);
    init(0);
    static const char *syms[] = {"cuInit", "cuMemAlloc", "cuMemFree", "cuMemGetInfo", "cuCtxCreate",
                                 "cuLaunchKernel", "cuLaunchKernelEx", "cuLaunchCooperativeKernel",
                                 "cuGraphLaunch", "cuMemAllocAsync", "cuMemFreeAsync", "cuDeviceGetName",
                                 "cuGetProcAddress", "cuNoSuchFunction", "cuStreamSynchronize",
                                 "cuDevicePrimaryCtxRelease", "cuLaunch", "cuLaunchGrid", "cuLaunchGridAsync",
                                 "cuArrayCreate", "cuMemAllocPitch"};
    static const int vers[] = {3000, 7000, 11080, 12020, 13000};
    for (size_t s = 0; s < sizeof syms / sizeof *syms; s++)
        for (size_t v = 0; v < sizeof vers / sizeof *vers; v++)
            for (int fl = 0; fl < 3; fl++) {
                void *p = NULL;
                st = -1;
                CUresult r = gpa2(syms[s], &p, vers[v], (cuuint64_t)fl, &st);
                printf("gpa %s %d %d -> rc=%d st=%d %s\n", syms[s], vers[v], fl, r, st, who(p, buf, sizeof buf));
            }
    void *p = NULL;
    CUresult r1 = gpa1("cuMemAlloc", &p, 12000, 0);
    printf("gpa1 cuMemAlloc 12000 0 -> rc=%d %s\n", r1, who(p, buf, sizeof buf));
    printf("gpa cuMemAlloc 99000 0 -> rc=%d\n", gpa2("cuMemAlloc", &p, 99000, 0, &st));
    /* chained: the cuGetProcAddress handed out by cuGetProcAddress must still be the shim */
    gpa2_fn chained = NULL;
    gpa2("cuGetProcAddress", (void **)&chained, 12000, 0, &st);
    alloc_fn alloc = NULL;
    chained("cuMemAlloc", (void **)&alloc, 12000, 0, &st);
    printf("chained cuMemAlloc -> %s\n", who((void *)alloc, buf, sizeof buf));
    /* enforcement through the runtime's path */
    retain_fn retain = NULL;
    setcur_fn setcur = NULL;
    gpa2("cuDevicePrimaryCtxRetain", (void **)&retain, 12000, 0, &st);
    gpa2("cuCtxSetCurrent", (void **)&setcur, 12000, 0, &st);
    CUcontext c;
    retain(&c, 0);
    setcur(c);
    CUdeviceptr d;
    size_t want = argc > 1 ? strtoull(argv[1], NULL, 10) : (size_t)(2u << 20);
    printf("alloc via gpa rc=%d\n", alloc(&d, want));
    return 0;
}
