/* libvgpu internal interfaces. */
#ifndef HAMI_VGPU_H
#define HAMI_VGPU_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../include/cuda_abi.h"
#include "../include/nvml_abi.h"

#define VGPU_EXPORT __attribute__((visibility("default")))
#define VGPU_HIDDEN __attribute__((visibility("hidden")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define VGPU_MAX_DEV 16
#define VGPU_MAX_SLOTS 1024

/* ---------------------------------------------------------------- hook table */
enum {
#define CU_HOOK(name, base, ver, ptsz, wrap, params, args) H_##name,
#include "hooks.def"
#undef CU_HOOK
    H_COUNT
};
enum {
#define CU_HELPER(name, params) X_##name,
#define NVML_HELPER(name, params)
#include "helpers.def"
#undef CU_HELPER
#undef NVML_HELPER
    X_COUNT
};
enum {
#define CU_HELPER(name, params)
#define NVML_HELPER(name, params) N_##name,
#include "helpers.def"
#undef CU_HELPER
#undef NVML_HELPER
    N_COUNT
};
enum {
#define NVML_HOOK(name, params, args) NH_##name,
#include "nvml_hooks.def"
#undef NVML_HOOK
    NH_COUNT
};

#define CU_HOOK(name, base, ver, ptsz, wrap, params, args) typedef CUresult(*name##_fn) params;
#include "hooks.def"
#undef CU_HOOK
#define CU_HELPER(name, params) typedef CUresult(*name##_fn) params;
#define NVML_HELPER(name, params) typedef nvmlReturn_t(*name##_fn) params;
#include "helpers.def"
#undef CU_HELPER
#undef NVML_HELPER
#define NVML_HOOK(name, params, args) typedef nvmlReturn_t(*name##_fn) params;
#include "nvml_hooks.def"
#undef NVML_HOOK

/* exported wrappers: declared from the table so a mismatching definition is a compile error */
#define CU_HOOK(name, base, ver, ptsz, wrap, params, args) VGPU_EXPORT CUresult name params;
#include "hooks.def"
#undef CU_HOOK
#define NVML_HOOK(name, params, args) VGPU_EXPORT nvmlReturn_t name params;
#include "nvml_hooks.def"
#undef NVML_HOOK

struct vgpu_hook_info {
    const char *name;
    const char *base;
    int version;
    int ptsz;
    void *hook;
};
extern VGPU_HIDDEN const struct vgpu_hook_info vgpu_hooks[H_COUNT];
extern VGPU_HIDDEN void *_Atomic vgpu_real[H_COUNT];
extern VGPU_HIDDEN void *vgpu_helper[X_COUNT];
extern VGPU_HIDDEN void *vgpu_nvml_helper[N_COUNT];
extern VGPU_HIDDEN void *vgpu_nvml_real[NH_COUNT];
extern VGPU_HIDDEN int vgpu_nvml_ok; /* libnvidia-ml.so.1 loaded and initialised */

VGPU_HIDDEN void *vgpu_resolve_slow(int idx);
/* pointer to the real driver function for hook `name`; NULL if the driver lacks it */
#define REAL_PTR(name)                                                                           \
    ({                                                                                           \
        void *p_ = atomic_load_explicit(&vgpu_real[H_##name], memory_order_relaxed);             \
        if (unlikely(!p_)) p_ = vgpu_resolve_slow(H_##name);                                     \
        (name##_fn) p_;                                                                          \
    })
/* calls the real driver function for hook `name` with `args`, a parenthesised list as in hooks.def */
#define CALL_REAL_ARGS(name, args)                                                               \
    ({                                                                                           \
        name##_fn f_ = REAL_PTR(name);                                                           \
        f_ ? f_ args : (CUresult)CUDA_ERROR_NOT_FOUND;                                           \
    })
#define CALL_REAL(name, ...) CALL_REAL_ARGS(name, (__VA_ARGS__))
#define HELPER(name) ((name##_fn)vgpu_helper[X_##name])
#define NVML_HELPER_FN(name) ((name##_fn)vgpu_nvml_helper[N_##name])

VGPU_HIDDEN void vgpu_init(void); /* loads the driver; idempotent, thread-safe */
VGPU_HIDDEN void vgpu_post_init(void);

/* ---------------------------------------------------------------- logging + config */
enum { VLOG_ERROR = 0, VLOG_WARN = 2, VLOG_INFO = 3, VLOG_DEBUG = 4 };
extern VGPU_HIDDEN int vgpu_log_level;
VGPU_HIDDEN void vgpu_log_init(void);
VGPU_HIDDEN void vgpu_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_ERR(...) vgpu_log(VLOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) do { if (vgpu_log_level >= VLOG_WARN) vgpu_log(VLOG_WARN, __VA_ARGS__); } while (0)
#define LOG_INFO(...) do { if (vgpu_log_level >= VLOG_INFO) vgpu_log(VLOG_INFO, __VA_ARGS__); } while (0)
#define LOG_DEBUG(...) do { if (vgpu_log_level >= VLOG_DEBUG) vgpu_log(VLOG_DEBUG, __VA_ARGS__); } while (0)

/* Parses a size: decimal digits, optional k/m/g/t (binary), optional "i", optional "b"; or a bare "b".
 * Returns 0 on success. No octal, no hex, no fractions, no sign, overflow rejected. */
VGPU_HIDDEN int vgpu_parse_size(const char *s, uint64_t *out);
/* Parses a plain decimal percentage 0..100. Returns 0 on success. */
VGPU_HIDDEN int vgpu_parse_percent(const char *s, uint32_t *out);

enum { POLICY_DEFAULT = 0, POLICY_FORCE = 1, POLICY_DISABLE = 2 };
#define VGPU_LIMIT_DENY 1ULL /* a malformed limit: every allocation is refused */

/* The read-only file the device plugin mounts into every hami-core container: KEY=VALUE lines with
 * the environment variables' names. When it exists it is the only source of limits, policy and the
 * region's location, and the debugging knobs are ignored. */
#ifndef VGPU_CONF_PATH
#define VGPU_CONF_PATH "/etc/hami/vgpu.conf"
#endif
struct vgpu_config {
    uint64_t mem_limit[VGPU_MAX_DEV]; /* 0 = unlimited (never from an explicit 0: that denies) */
    uint32_t sm_limit[VGPU_MAX_DEV];  /* percent, 0 or >=100 = unlimited */
    int policy;
    int priority;
    uint64_t ctx_overhead; /* 0 = measure through NVML */
    int ctx_overhead_set;
    char cache_path[512];
    unsigned period_ms;
    int from_file;                      /* VGPU_CONF_PATH exists */
    int nuuid;                          /* the file's card order (NVIDIA_VISIBLE_DEVICES) */
    char uuid[VGPU_MAX_DEV][48];
};
VGPU_HIDDEN void vgpu_config_load(struct vgpu_config *c);
/* getenv() for a debugging knob: NULL (with a warning) when the configuration file governs */
VGPU_HIDDEN const char *vgpu_knob(const char *name);

/* ---------------------------------------------------------------- shared region (ABI v1) */
#define VGPU_REGION_MAGIC 0x315550475649414dULL /* "MAIVGPU1" little-endian */
#define VGPU_REGION_ABI_MAJOR 1
#define VGPU_REGION_ABI_MINOR 3 /* 1: monitor_ns; 2: dev.throttled_ns; 3: ctl_ns, ctl_id, ctl_blind */

enum { SLOT_FREE = 0, SLOT_LIVE = 1 };

struct vgpu_dev {
    /* memory: read-mostly config + the container total */
    uint64_t limit;            /* bytes; 0 = unlimited */
    _Atomic uint64_t used;     /* bytes charged by live slots (cache of the slot sum) */
    _Atomic uint64_t peak;     /* high-water mark of used */
    _Atomic uint64_t ctx_overhead; /* measured or configured bytes per context */
    uint32_t sm_limit;         /* percent */
    uint32_t pad0;
    char uuid[48];             /* "GPU-..." as the CUDA side saw it, for NVML mapping */
    char pad1[32];
    /* limiter: its own cache line(s) */
    _Alignas(64) _Atomic int64_t tokens;   /* launch units (1 launch = VGPU_UNIT) */
    _Atomic uint64_t last_refill_ns;
    _Atomic uint64_t refilled;  /* cumulative units added */
    _Atomic uint64_t rate;      /* units per second */
    _Atomic uint64_t burst;     /* bucket cap, units */
    _Atomic uint32_t limiting;  /* 1 = pace launches on this device */
    _Atomic uint32_t throttled; /* set by a waiting launch, cleared by the leader */
    _Atomic uint64_t cost_ns;   /* estimated GPU ns per launch */
    _Atomic uint64_t gain_ppm;  /* integral correction, 1e6 = 1.0 */
    _Atomic uint64_t util_x100; /* last measured container utilisation, percent*100 */
    /* ABI 1.2: cumulative ns this container's launches on the device spent waiting, in the limiter
     * or in a node monitor's priority hold (added by the waiting launch only; 0 in older regions) */
    _Atomic uint64_t throttled_ns;
    /* ABI 1.3: launches timed by the library itself (stream synchronised before and after), summed
     * ns and count; what a controller without NVML paces by (launch.c) */
    _Atomic uint64_t sampled_ns;
    _Atomic uint64_t sampled_n;
    /* ABI 1.3: processes that waited for this card's tokens in the last second (the controller's
     * count): with two or more, the budget is shared fairly between them (launch.c) */
    _Atomic uint32_t contenders;
    uint32_t pad3;
    char pad2[16];
};

struct vgpu_slot {
    _Atomic uint32_t state;
    _Atomic uint32_t gen;
    int32_t pid;
    int32_t hostpid; /* written by a node agent; 0 = same PID namespace */
    uint64_t start_ns;
    _Atomic uint64_t used[VGPU_MAX_DEV];
    /* ABI 1.3, the compute limiter's fairness: GPU ns the controller measured for this process
     * (cumulative, all limited cards), and CLOCK_MONOTONIC of its last wait for tokens */
    _Atomic uint64_t busy_ns;
    _Atomic uint64_t want_ns;
    char pad[64 - 40];
};

struct vgpu_region {
    uint64_t magic;
    uint32_t abi_major, abi_minor;
    uint32_t header_size, region_size;
    uint32_t ndev, max_slots;
    int32_t policy, priority;
    _Atomic int32_t utilization_switch; /* default policy: limit only while 1 (node monitor may clear) */
    _Atomic int32_t recent_kernel;      /* <0: a node monitor blocks launches (priority) */
    _Atomic uint64_t last_kernel_ns;
    _Atomic uint32_t slot_hwm;          /* highest slot index ever used + 1 */
    _Atomic uint32_t leader_pid;
    /* CLOCK_MONOTONIC of the node monitor's last pass over this region (0: no monitor). A block
     * (recent_kernel < 0) is honoured only while this is fresh: a dead monitor never holds anyone. */
    _Atomic uint64_t monitor_ns;
    /* ABI 1.3 (zero in older regions): the compute controller's heartbeat, CLOCK_MONOTONIC of its last
     * pass; the random id of the process running it (the leader, or one standing in for it); 1 while
     * that process paces without NVML (launch sampling, see launch.c) */
    _Atomic uint64_t ctl_ns;
    _Atomic uint64_t ctl_id;
    _Atomic uint32_t ctl_blind;
    uint32_t reserved0;
    _Alignas(64) pthread_mutex_t lock; /* robust, process-shared: admission + slot table */
    _Alignas(64) struct vgpu_dev dev[VGPU_MAX_DEV];
    _Alignas(64) struct vgpu_slot slot[VGPU_MAX_SLOTS];
};
/* byte-range lock offsets in the region file (beyond the mapped data) */
#define VGPU_LOCK_BASE ((sizeof(struct vgpu_region) + 4095) & ~(size_t)4095)
#define VGPU_LOCK_INIT (VGPU_LOCK_BASE + 0)
#define VGPU_LOCK_LEADER (VGPU_LOCK_BASE + 1)
#define VGPU_LOCK_SLOT(i) (VGPU_LOCK_BASE + 64 + (size_t)(i))

#define VGPU_UNIT 1024LL

extern VGPU_HIDDEN struct vgpu_region *vgpu_R;
extern VGPU_HIDDEN struct vgpu_config vgpu_cfg;
extern VGPU_HIDDEN int vgpu_ndev;

VGPU_HIDDEN struct vgpu_region *vgpu_region(void); /* attach lazily (also after fork) */
/* The limits and policy that apply: the configuration file's when there is one (the region is
 * writable by every process of the container), else the region's (its creator's environment). */
static inline uint64_t vgpu_mem_limit(const struct vgpu_region *R, int d) {
    return vgpu_cfg.from_file ? vgpu_cfg.mem_limit[d] : R->dev[d].limit;
}
static inline uint32_t vgpu_sm_limit(const struct vgpu_region *R, int d) {
    return vgpu_cfg.from_file ? vgpu_cfg.sm_limit[d] : R->dev[d].sm_limit;
}
static inline int vgpu_policy(const struct vgpu_region *R) { return vgpu_cfg.from_file ? vgpu_cfg.policy : R->policy; }
VGPU_HIDDEN int vgpu_mem_reserve(int dev, uint64_t bytes, const char *what);
VGPU_HIDDEN void vgpu_mem_force(int dev, uint64_t bytes);
VGPU_HIDDEN void vgpu_mem_unreserve(int dev, uint64_t bytes);
VGPU_HIDDEN int vgpu_reap_dead(int take_lock);
VGPU_HIDDEN int vgpu_slot_index(void);
/* this process's PID in the host's namespace as far as it is known (/proc's NSpid, or learnt from
 * NVML and recorded in the slot), else getpid() */
VGPU_HIDDEN int vgpu_host_pid(void);
VGPU_HIDDEN void vgpu_slot_set_hostpid(int pid);
/* whether NVML's `pid` (host namespace) is a live process of this container's region */
VGPU_HIDDEN int vgpu_region_owns_pid(unsigned pid);
/* the live slot of NVML's `pid`, or -1 */
VGPU_HIDDEN int vgpu_region_slot_of_pid(unsigned pid);
VGPU_HIDDEN int vgpu_is_leader_try(void);
VGPU_HIDDEN void vgpu_region_atfork_child(void);
VGPU_HIDDEN void vgpu_region_atfork_prepare(void);
VGPU_HIDDEN void vgpu_region_atfork_parent(void);
VGPU_HIDDEN void vgpu_mem_atfork_prepare(void);
VGPU_HIDDEN void vgpu_mem_atfork_parent(void);
VGPU_HIDDEN uint64_t vgpu_now_ns(void);
/* the region index (the container's card) of the current context's device */
VGPU_HIDDEN int vgpu_current_device(void);
/* the region index of CUDA ordinal `ord` of this process: cards are matched by UUID, so a process
 * that reorders CUDA_VISIBLE_DEVICES charges each card's memory to that card; -1 out of range */
VGPU_HIDDEN int vgpu_dev_index(int ord);
/* region.c: the region index recorded for `uuid`, claimed (prefering `want`) if new; -1 if full */
VGPU_HIDDEN int vgpu_region_dev_for_uuid(const char *uuid, int want);

/* alloc_account.c */
VGPU_HIDDEN void vgpu_mem_atfork_child(void);
VGPU_HIDDEN int vgpu_pools_resample(void);
/* context_account.c */
VGPU_HIDDEN void vgpu_ctx_atfork_child(void);
/* launch.c */
extern VGPU_HIDDEN _Atomic int vgpu_gate_any; /* GATE_LIMIT | GATE_HOLD: the launch path's slow branch */
enum { GATE_LIMIT = 1, GATE_HOLD = 2 };
#define VGPU_MONITOR_STALE_NS 2000000000ULL /* a monitor silent this long no longer holds launches */
VGPU_HIDDEN int vgpu_launch_slow(void); /* 1: time this launch (launch.c) */
VGPU_HIDDEN void vgpu_limiter_start(void);
VGPU_HIDDEN void vgpu_limiter_atfork_child(void);
/* nvml.c */
VGPU_HIDDEN void vgpu_nvml_load(void);
VGPU_HIDDEN nvmlDevice_t vgpu_nvml_device(int cudadev);
VGPU_HIDDEN void vgpu_uuid_str(const CUuuid *u, char *out, size_t n);

#endif
