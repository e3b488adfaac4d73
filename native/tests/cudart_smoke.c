/* Best-effort check with a real libcudart (no GPU): load it, ask for the device count, and let
 * libvgpu's debug log show which driver entry points cudart fetched through cuGetProcAddress.
 * cudart is expected to fail later (the fake driver has no private export tables). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

typedef int (*count_fn)(int *);
typedef int (*ver_fn)(int *);

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        printf("cannot load %s: %s\n", argv[1], dlerror());
        return 2;
    }
    ver_fn rv = (ver_fn)dlsym(h, "cudaRuntimeGetVersion");
    count_fn count = (count_fn)dlsym(h, "cudaGetDeviceCount");
    int v = 0, n = -1;
    if (rv) rv(&v);
    int r = count ? count(&n) : -1;
    printf("cudart %d cudaGetDeviceCount rc=%d n=%d\n", v, r, n);
    return 0;
}
