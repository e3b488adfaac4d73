/* Symbol resolution: the hook table, lazy driver loading, the dlsym filter (entered through a
 * tail-jumping trampoline so RTLD_NEXT keeps its caller) and cuGetProcAddress translation. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vgpu.h"

const struct vgpu_hook_info vgpu_hooks[H_COUNT] = {
#define CU_HOOK(name, base, ver, ptsz, wrap, params, args) {#name, #base, ver, ptsz, (void *)&name},
#include "hooks.def"
#undef CU_HOOK
};
static const char *const helper_names[X_COUNT] = {
#define CU_HELPER(name, params) #name,
#define NVML_HELPER(name, params)
#include "helpers.def"
#undef CU_HELPER
#undef NVML_HELPER
};

void *_Atomic vgpu_real[H_COUNT];
void *vgpu_helper[X_COUNT];
struct vgpu_config vgpu_cfg;
int vgpu_ndev;

/* used by the assembly trampoline */
VGPU_HIDDEN void *vgpu_real_dlsym_ptr;
typedef void *(*dlsym_fn)(void *, const char *);
#define REAL_DLSYM ((dlsym_fn)vgpu_real_dlsym_ptr)

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;
static _Atomic int g_ready;
static __thread int t_in_init __attribute__((tls_model("initial-exec")));
static void *g_driver;
static void *g_driver_base;

/* The dlsym path can run before a sanitizer runtime has set up its shadow memory (ASan resolves
 * its interceptors through dlsym from its own constructor), so it is never instrumented. */
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

NO_SANITIZE static void find_real_dlsym(void) {
    static const char *const vers[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    void *p = NULL;
    for (size_t i = 0; i < sizeof vers / sizeof *vers && !p; i++) p = dlvsym(RTLD_NEXT, "dlsym", vers[i]);
    if (p) __atomic_store_n(&vgpu_real_dlsym_ptr, p, __ATOMIC_RELEASE);
    if (!p) {
        static const char msg[] = "[libvgpu ERROR] cannot find the C library's dlsym\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        abort();
    }
}

static void fork_prepare(void) {
    vgpu_region_atfork_prepare();
    vgpu_mem_atfork_prepare();
}
static void fork_parent(void) {
    vgpu_mem_atfork_parent();
    vgpu_region_atfork_parent();
}
static _Atomic int g_post_done;
static int g_dmap[VGPU_MAX_DEV]; /* CUDA ordinal -> region index, set in vgpu_post_init */
static _Atomic int g_dmap_ready;
static pthread_mutex_t g_post_mu = PTHREAD_MUTEX_INITIALIZER;
static void fork_child(void) {
    vgpu_mem_atfork_child();
    vgpu_ctx_atfork_child();
    vgpu_region_atfork_child();
    vgpu_limiter_atfork_child();
    pthread_mutex_init(&g_post_mu, NULL);
    atomic_store(&g_post_done, 0);
}

static void resolve_from(void *h, const char *what) {
    int missing = 0;
    for (int i = 0; i < H_COUNT; i++) {
        void *p = REAL_DLSYM(h, vgpu_hooks[i].name);
        atomic_store(&vgpu_real[i], p);
        if (!p) missing++;
    }
    for (int i = 0; i < X_COUNT; i++) vgpu_helper[i] = REAL_DLSYM(h, helper_names[i]);
    Dl_info di;
    void *probe = atomic_load(&vgpu_real[H_cuInit]);
    if (probe && dladdr(probe, &di)) g_driver_base = di.dli_fbase;
    LOG_DEBUG("driver %s: %d of %d hooked entry points present", what, H_COUNT - missing, H_COUNT);
}

/* The driver could not be loaded by soname at initialisation (say it lives outside the loader path
 * and the application dlopen()s it by absolute path later): adopt the first real handle that
 * exports cuInit when a hooked name is looked up in it. */
static pthread_mutex_t g_adopt_mu = PTHREAD_MUTEX_INITIALIZER;
static void adopt_driver(void *handle) {
    static char self;
    Dl_info me, it;
    void *p = REAL_DLSYM(handle, "cuInit");
    if (!p || !dladdr(&self, &me) || !dladdr(p, &it) || it.dli_fbase == me.dli_fbase) return;
    pthread_mutex_lock(&g_adopt_mu);
    if (!g_driver) {
        g_driver = handle;
        resolve_from(handle, it.dli_fname ? it.dli_fname : "(adopted)");
    }
    pthread_mutex_unlock(&g_adopt_mu);
}

static void init_once(void) {
    t_in_init = 1;
    if (!__atomic_load_n(&vgpu_real_dlsym_ptr, __ATOMIC_ACQUIRE)) find_real_dlsym();
    vgpu_log_init();
    vgpu_config_load(&vgpu_cfg);
    const char *path = vgpu_knob("LIBVGPU_REAL_LIBCUDA");
    if (!path || !*path) path = "libcuda.so.1";
    g_driver = dlopen(path, RTLD_NOW | RTLD_NODELETE);
    if (!g_driver)
        LOG_INFO("cannot load the CUDA driver %s yet: %s", path, dlerror());
    else
        resolve_from(g_driver, path);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    atomic_store_explicit(&g_ready, 1, memory_order_release);
    t_in_init = 0;
}

void vgpu_init(void) {
    if (likely(atomic_load_explicit(&g_ready, memory_order_acquire))) return;
    if (t_in_init) return;
    pthread_once(&g_init_once, init_once);
}

void *vgpu_resolve_slow(int idx) {
    vgpu_init();
    return atomic_load(&vgpu_real[idx]);
}

void vgpu_post_init(void) {
    if (likely(atomic_load_explicit(&g_post_done, memory_order_acquire))) return;
    vgpu_init();
    pthread_mutex_lock(&g_post_mu);
    if (!atomic_load(&g_post_done)) {
        int n = 0;
        if (HELPER(cuDeviceGetCount) && HELPER(cuDeviceGetCount)(&n) == CUDA_SUCCESS && n > 0)
            vgpu_ndev = n > VGPU_MAX_DEV ? VGPU_MAX_DEV : n;
        struct vgpu_region *R = vgpu_region();
        char us[VGPU_MAX_DEV][48];
        int listed = 0;
        for (int d = 0; d < vgpu_ndev; d++) {
            CUuuid u;
            CUresult r = CUDA_ERROR_NOT_FOUND;
            if (HELPER(cuDeviceGetUuid_v2)) r = HELPER(cuDeviceGetUuid_v2)(&u, d);
            else if (HELPER(cuDeviceGetUuid)) r = HELPER(cuDeviceGetUuid)(&u, d);
            us[d][0] = 0;
            if (r == CUDA_SUCCESS) vgpu_uuid_str(&u, us[d], sizeof us[d]);
            for (int i = 0; i < vgpu_cfg.nuuid && us[d][0]; i++) listed += !strcmp(us[d], vgpu_cfg.uuid[i]);
        }
        /* The file lists the cards, but the driver reports none of them: a simulated driver (its own
         * UUIDs) rather than a card the container was not given. Map by ordinal, as without UUIDs. */
        int by_ordinal = vgpu_cfg.nuuid > 0 && !listed;
        if (by_ordinal)
            LOG_WARN("none of the %d CUDA devices' UUIDs is among the %d of %s; mapping them by ordinal", vgpu_ndev,
                     vgpu_cfg.nuuid, VGPU_CONF_PATH);
        for (int d = 0; d < vgpu_ndev; d++) {
            int idx = us[d][0] && !by_ordinal ? vgpu_region_dev_for_uuid(us[d], d) : -1;
            g_dmap[d] = idx >= 0 ? idx : d;
            if (g_dmap[d] != d) LOG_INFO("CUDA device %d is the container's card %d (%s)", d, g_dmap[d], us[d]);
        }
        atomic_store_explicit(&g_dmap_ready, 1, memory_order_release);
        if (vgpu_log_level >= VLOG_INFO) {
            for (int d = 0; d < (vgpu_ndev ? vgpu_ndev : 1); d++) {
                int i = vgpu_dev_index(d);
                if (i < 0) continue;
                LOG_INFO("device %d: memory limit %.1f MiB, SM limit %u%%, region %s slot %d", d,
                         vgpu_mem_limit(R, i) / 1048576.0, vgpu_sm_limit(R, i), vgpu_cfg.cache_path, vgpu_slot_index());
            }
        }
        vgpu_limiter_start();
        atomic_store_explicit(&g_post_done, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_post_mu);
}

int vgpu_dev_index(int ord) {
    if (ord < 0 || ord >= VGPU_MAX_DEV) return -1;
    return atomic_load_explicit(&g_dmap_ready, memory_order_acquire) ? g_dmap[ord] : ord;
}

int vgpu_current_device(void) {
    CUdevice d = 0;
    if (vgpu_ndev == 1) return vgpu_dev_index(0);
    if (HELPER(cuCtxGetDevice) && HELPER(cuCtxGetDevice)(&d) == CUDA_SUCCESS && d >= 0 && d < VGPU_MAX_DEV)
        return vgpu_dev_index(d);
    return vgpu_dev_index(0);
}

/* ---------------------------------------------------------------- dlsym */
NO_SANITIZE static int find_hook(const char *name) {
    for (int i = 0; i < H_COUNT; i++)
        if (!strcmp(vgpu_hooks[i].name, name)) return i;
    return -1;
}

static int caller_in(void *caller, void *base) {
    Dl_info di;
    return base && caller && dladdr(caller, &di) && di.dli_fbase == base;
}

extern VGPU_HIDDEN void *vgpu_nvml_hook_ptr(const char *name, void *caller);

/* Returns the pointer to hand back, or NULL to let the C library's dlsym answer the caller
 * (the trampoline then jumps there with the caller's own return address). */
VGPU_HIDDEN void *vgpu_dlsym_filter(void *handle, const char *name, void *caller);
NO_SANITIZE void *vgpu_dlsym_filter(void *handle, const char *name, void *caller) {
    /* no pthread_once/strcmp here: under a sanitizer runtime those may be interceptors that are not
     * set up yet. Racing first calls both store the same pointer. */
    if (unlikely(!__atomic_load_n(&vgpu_real_dlsym_ptr, __ATOMIC_ACQUIRE))) find_real_dlsym();
    if (!name || handle == RTLD_NEXT || t_in_init) return NULL;
    if (name[0] == 'c' && name[1] == 'u') {
        int i = find_hook(name);
        if (i < 0) return NULL;
        vgpu_init();
        if (unlikely(!g_driver) && handle != RTLD_DEFAULT) adopt_driver(handle);
        if (!atomic_load(&vgpu_real[i]) || caller_in(caller, g_driver_base)) return NULL;
        if (!REAL_DLSYM(handle, name)) return NULL; /* not in that object: let dlsym report it */
        return vgpu_hooks[i].hook;
    }
    if (name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l') return vgpu_nvml_hook_ptr(name, caller);
    return NULL;
}

void *vgpu_dlsym_in_object(void *handle, const char *name) { return REAL_DLSYM(handle, name); }

#if !defined(__x86_64__)
/* Portable fallback: a C tail call. gcc emits a jump at -O2, which preserves the caller for
 * RTLD_NEXT, but that is not guaranteed; x86-64 uses the assembly trampoline in dlsym_x86_64.S. */
VGPU_EXPORT void *dlsym(void *handle, const char *name) {
    void *p = vgpu_dlsym_filter(handle, name, __builtin_return_address(0));
    if (p) return p;
    return REAL_DLSYM(handle, name);
}
#endif

/* ---------------------------------------------------------------- cuGetProcAddress */
static void *translate(const char *symbol, void *p, int version, cuuint64_t flags) {
    int best = -1;
    for (int i = 0; i < H_COUNT; i++) {
        if (strcmp(vgpu_hooks[i].base, symbol)) continue;
        if (atomic_load(&vgpu_real[i]) == p) return vgpu_hooks[i].hook; /* exact variant identified */
        if (vgpu_hooks[i].version > version) continue;
        int want_pt = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
        if (best < 0) { best = i; continue; }
        int bp = vgpu_hooks[best].ptsz == want_pt, ip = vgpu_hooks[i].ptsz == want_pt;
        if (ip > bp || (ip == bp && vgpu_hooks[i].version > vgpu_hooks[best].version)) best = i;
    }
    if (best < 0) {
        for (int i = 0; i < H_COUNT; i++)
            if (!strcmp(vgpu_hooks[i].base, symbol)) {
                /* a hooked entry point in a variant the table lacks: never hand out the driver's */
                LOG_ERR("cuGetProcAddress(%s, %d): no intercepted variant for this version; refusing it", symbol,
                        version);
                return NULL;
            }
        return p; /* not a hooked symbol */
    }
    /* The driver handed out an internal address: pick the variant by the documented rules. */
    void *expect = NULL;
    if (atomic_compare_exchange_strong(&vgpu_real[best], &expect, p))
        LOG_DEBUG("cuGetProcAddress(%s, %d, %llu): using driver pointer for %s", symbol, version,
                  (unsigned long long)flags, vgpu_hooks[best].name);
    return vgpu_hooks[best].hook;
}

static void gpa_log(const char *fn, const char *symbol, int version, cuuint64_t flags, CUresult r, void *orig,
                    void *out) {
    if (vgpu_log_level < VLOG_DEBUG) return;
    const char *v = "driver";
    for (int i = 0; i < H_COUNT; i++)
        if (out && out == vgpu_hooks[i].hook) v = vgpu_hooks[i].name;
    LOG_DEBUG("%s(%s, %d, %llu) = %d -> %s", fn, symbol ? symbol : "(null)", version, (unsigned long long)flags, r,
              !orig ? "NULL" : out != orig ? v : "driver");
}

/* cuGetProcAddress / _v2 */
static CUresult gpa_done(const char *fn, CUresult r, const char *symbol, void **pfn, int cudaVersion,
                         cuuint64_t flags) {
    void *orig = pfn ? *pfn : NULL;
    if (r == CUDA_SUCCESS && symbol && pfn && *pfn && !(*pfn = translate(symbol, *pfn, cudaVersion, flags)))
        r = CUDA_ERROR_NOT_FOUND;
    gpa_log(fn, symbol, cudaVersion, flags, r, orig, pfn ? *pfn : NULL);
    return r;
}
#define WRAP_proc_address(name, base, params, args)                                              \
    CUresult name params { return gpa_done(#name, CALL_REAL_ARGS(name, args), symbol, pfn, cudaVersion, flags); }
#include "hooks_gen.h"

CUresult cuInit(unsigned int flags) {
    CUresult r = CALL_REAL(cuInit, flags);
    if (r == CUDA_SUCCESS) vgpu_post_init();
    return r;
}
