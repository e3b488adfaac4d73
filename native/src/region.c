/* The shared region: one file per container, mapped by every process. Admission is
 * reserve-then-commit under a robust process-shared mutex; liveness is a kernel-released
 * open-file-description lock per slot, so a SIGKILLed process is reclaimed exactly once and a
 * recycled PID can never keep a dead slot alive. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

_Static_assert(sizeof(struct vgpu_slot) == 192, "slot layout");
_Static_assert(sizeof(struct vgpu_dev) == 256, "dev layout");
_Static_assert(offsetof(struct vgpu_region, policy) == 32, "region layout");
_Static_assert(offsetof(struct vgpu_region, utilization_switch) == 40, "region layout");
_Static_assert(offsetof(struct vgpu_region, recent_kernel) == 44, "region layout");
_Static_assert(offsetof(struct vgpu_region, slot_hwm) == 56, "region layout");
_Static_assert(offsetof(struct vgpu_region, lock) == 128, "region layout");
_Static_assert(offsetof(struct vgpu_dev, used) == 8, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, sm_limit) == 32, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, uuid) == 40, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, tokens) == 128, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, util_x100) == 192, "dev layout");
_Static_assert(offsetof(struct vgpu_slot, used) == 24, "slot layout");
_Static_assert(offsetof(struct vgpu_region, dev) == 192, "region layout");
_Static_assert(offsetof(struct vgpu_region, slot) == 4288, "region layout");
_Static_assert(sizeof(struct vgpu_region) == 200896, "region layout");

struct vgpu_region *vgpu_R;
static int g_fd = -1;
static int g_slot = -1;
static _Atomic int g_attached;
static pthread_mutex_t g_attach_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_leader;

uint64_t vgpu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int ofd_lock(int fd, off_t off, int type, int wait) {
    struct flock fl = {.l_type = (short)type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1, .l_pid = 0};
    int r;
    do {
        r = fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* 1 if nobody holds the byte (the slot's owner is gone), 0 if held, -1 on error */
static int ofd_free(int fd, off_t off) {
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1, .l_pid = 0};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) return -1;
    return fl.l_type == F_UNLCK;
}

static void reconcile_locked(struct vgpu_region *R);

static void region_lock(struct vgpu_region *R) {
    int r = pthread_mutex_lock(&R->lock);
    if (r == EOWNERDEAD) {
        LOG_WARN("a process died holding the region lock; reconciling usage from the slot table");
        reconcile_locked(R);
        pthread_mutex_consistent(&R->lock);
    } else if (r != 0) {
        LOG_ERR("region lock failed: %s", strerror(r));
    }
}

static void region_unlock(struct vgpu_region *R) { pthread_mutex_unlock(&R->lock); }

static void slot_release_locked(struct vgpu_region *R, int i) {
    struct vgpu_slot *s = &R->slot[i];
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        uint64_t u = atomic_load(&s->used[d]);
        if (!u) continue;
        uint64_t cur = atomic_load(&R->dev[d].used);
        atomic_store(&R->dev[d].used, cur > u ? cur - u : 0);
        atomic_store(&s->used[d], 0);
    }
    s->pid = 0;
    s->hostpid = 0;
    atomic_fetch_add(&s->gen, 1);
    atomic_store_explicit(&s->state, SLOT_FREE, memory_order_release);
}

/* Reclaim every slot whose owner is dead. Caller holds the region lock. Returns the count. */
static int reap_dead_locked(struct vgpu_region *R) {
    if (g_fd < 0) return 0;
    int n = 0;
    uint32_t hwm = atomic_load(&R->slot_hwm);
    if (hwm > VGPU_MAX_SLOTS) hwm = VGPU_MAX_SLOTS;
    for (uint32_t i = 0; i < hwm; i++) {
        if ((int)i == g_slot || atomic_load(&R->slot[i].state) != SLOT_LIVE) continue;
        if (ofd_lock(g_fd, (off_t)VGPU_LOCK_SLOT(i), F_WRLCK, 0) == 0) {
            LOG_INFO("reclaiming slot %u of dead pid %d", i, R->slot[i].pid);
            slot_release_locked(R, (int)i);
            ofd_lock(g_fd, (off_t)VGPU_LOCK_SLOT(i), F_UNLCK, 0);
            n++;
        }
    }
    return n;
}

static void reconcile_locked(struct vgpu_region *R) {
    reap_dead_locked(R);
    uint32_t hwm = atomic_load(&R->slot_hwm);
    if (hwm > VGPU_MAX_SLOTS) hwm = VGPU_MAX_SLOTS;
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        uint64_t sum = 0;
        for (uint32_t i = 0; i < hwm; i++)
            if (atomic_load(&R->slot[i].state) == SLOT_LIVE) sum += atomic_load(&R->slot[i].used[d]);
        atomic_store(&R->dev[d].used, sum);
    }
}

int vgpu_reap_dead(int take_lock) {
    struct vgpu_region *R = vgpu_region();
    if (!R || g_fd < 0) return 0;
    if (!take_lock) return reap_dead_locked(R);
    /* cheap scan without the lock first: only take it when some owner is gone */
    uint32_t hwm = atomic_load(&R->slot_hwm);
    if (hwm > VGPU_MAX_SLOTS) hwm = VGPU_MAX_SLOTS;
    int any = 0;
    for (uint32_t i = 0; i < hwm && !any; i++)
        if ((int)i != g_slot && atomic_load(&R->slot[i].state) == SLOT_LIVE &&
            ofd_free(g_fd, (off_t)VGPU_LOCK_SLOT(i)) == 1)
            any = 1;
    if (!any) return 0;
    region_lock(R);
    int n = reap_dead_locked(R);
    region_unlock(R);
    return n;
}

static void init_region(struct vgpu_region *R) {
    memset(R, 0, sizeof *R);
    R->abi_major = VGPU_REGION_ABI_MAJOR;
    R->abi_minor = VGPU_REGION_ABI_MINOR;
    R->header_size = (uint32_t)offsetof(struct vgpu_region, dev);
    R->region_size = (uint32_t)sizeof *R;
    R->ndev = VGPU_MAX_DEV;
    R->max_slots = VGPU_MAX_SLOTS;
    R->policy = vgpu_cfg.policy;
    R->priority = vgpu_cfg.priority;
    atomic_store(&R->utilization_switch, 1);
    atomic_store(&R->recent_kernel, 0);
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        R->dev[d].limit = vgpu_cfg.mem_limit[d];
        R->dev[d].sm_limit = vgpu_cfg.sm_limit[d];
        if (vgpu_cfg.ctx_overhead_set) atomic_store(&R->dev[d].ctx_overhead, vgpu_cfg.ctx_overhead);
        if (d < vgpu_cfg.nuuid) memcpy(R->dev[d].uuid, vgpu_cfg.uuid[d], sizeof R->dev[d].uuid);
        atomic_store(&R->dev[d].gain_ppm, 1000000);
    }
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&R->lock, &a);
    pthread_mutexattr_destroy(&a);
    atomic_thread_fence(memory_order_release);
    __atomic_store_n(&R->magic, VGPU_REGION_MAGIC, __ATOMIC_RELEASE);
}

static struct vgpu_region *anon_region(const char *why) {
    LOG_ERR("shared region %s unusable (%s); limits apply to this process only", vgpu_cfg.cache_path, why);
    void *p = mmap(NULL, sizeof(struct vgpu_region), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        LOG_ERR("cannot allocate a private region: %s", strerror(errno));
        abort();
    }
    init_region(p);
    return p;
}

/* The configuration file governs: a region that disagrees with it (written by a process of the
 * container, or created before the file existed) is put back to the file's values. */
static void restore_config(struct vgpu_region *R) {
    int n = R->policy != vgpu_cfg.policy || R->priority != vgpu_cfg.priority;
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        n += R->dev[d].limit != vgpu_cfg.mem_limit[d] || R->dev[d].sm_limit != vgpu_cfg.sm_limit[d];
        if (d < vgpu_cfg.nuuid && strncmp(R->dev[d].uuid, vgpu_cfg.uuid[d], sizeof R->dev[d].uuid)) n++;
    }
    if (!n) return;
    LOG_WARN("the region %s disagrees with %s in %d field(s); restoring the file's limits, policy and cards",
             vgpu_cfg.cache_path, VGPU_CONF_PATH, n);
    R->policy = vgpu_cfg.policy;
    R->priority = vgpu_cfg.priority;
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        R->dev[d].limit = vgpu_cfg.mem_limit[d];
        R->dev[d].sm_limit = vgpu_cfg.sm_limit[d];
        if (d < vgpu_cfg.nuuid) memcpy(R->dev[d].uuid, vgpu_cfg.uuid[d], sizeof R->dev[d].uuid);
    }
}

static void check_config(struct vgpu_region *R) {
    if (vgpu_cfg.from_file) {
        restore_config(R);
        return;
    }
    int nm = 0, ns = 0, fm = -1, fs = -1;
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        if (R->dev[d].limit != vgpu_cfg.mem_limit[d] && nm++ == 0) fm = d;
        if (R->dev[d].sm_limit != vgpu_cfg.sm_limit[d] && ns++ == 0) fs = d;
    }
    if (nm)
        LOG_WARN("memory limit differs from the container region %s on %d device(s) (device %d: %llu here, %llu "
                 "in the region); the region's value applies",
                 vgpu_cfg.cache_path, nm, fm, (unsigned long long)vgpu_cfg.mem_limit[fm],
                 (unsigned long long)R->dev[fm].limit);
    if (ns)
        LOG_WARN("SM limit differs from the container region on %d device(s) (device %d: %u here, %u in the "
                 "region); the region's value applies",
                 ns, fs, vgpu_cfg.sm_limit[fs], R->dev[fs].sm_limit);
}

/* the outermost PID of /proc/self/status's NSpid when it lists more than one namespace (a procfs of
 * an outer namespace is mounted), else 0 */
static int nspid_outer(void) {
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strstr(buf, "\nNSpid:");
    if (!p) return 0;
    char *end;
    long outer = strtol(p + 7, &end, 10);
    long inner = strtol(end, &end, 10);
    return inner > 0 && outer > 0 && outer <= 0x7fffffff ? (int)outer : 0;
}

static void claim_slot(struct vgpu_region *R) {
    int hostpid = nspid_outer();
    g_slot = -1;
    region_lock(R);
    reap_dead_locked(R);
    for (int i = 0; i < VGPU_MAX_SLOTS; i++) {
        if (atomic_load(&R->slot[i].state) != SLOT_FREE) continue;
        if (g_fd >= 0 && ofd_lock(g_fd, (off_t)VGPU_LOCK_SLOT(i), F_WRLCK, 0) != 0) continue;
        struct vgpu_slot *s = &R->slot[i];
        for (int d = 0; d < VGPU_MAX_DEV; d++) atomic_store(&s->used[d], 0);
        s->pid = (int32_t)getpid();
        s->hostpid = hostpid; /* 0 = same namespace as NVML's, or unknown yet */
        s->start_ns = vgpu_now_ns();
        atomic_store_explicit(&s->state, SLOT_LIVE, memory_order_release);
        if (atomic_load(&R->slot_hwm) < (uint32_t)i + 1) atomic_store(&R->slot_hwm, (uint32_t)i + 1);
        g_slot = i;
        break;
    }
    region_unlock(R);
    if (g_slot < 0) LOG_ERR("no free process slot in %s; this process's usage is charged without a slot",
                            vgpu_cfg.cache_path);
    else LOG_DEBUG("claimed slot %d in %s", g_slot, vgpu_cfg.cache_path);
}

static struct vgpu_region *attach(void) {
    struct vgpu_region *R = NULL;
    const char *path = vgpu_cfg.cache_path;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return anon_region(strerror(errno));
    if (ofd_lock(fd, (off_t)VGPU_LOCK_INIT, F_WRLCK, 1) < 0) {
        close(fd);
        return anon_region("cannot lock it");
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (st.st_size < (off_t)sizeof *R && ftruncate(fd, (off_t)sizeof *R) < 0)) {
        close(fd);
        return anon_region("cannot size it");
    }
    void *p = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return anon_region("cannot map it");
    }
    R = p;
    uint64_t magic = __atomic_load_n(&R->magic, __ATOMIC_ACQUIRE);
    if (magic != VGPU_REGION_MAGIC) {
        if (magic != 0)
            LOG_WARN("%s has an unknown format (magic %llx); re-initialising it", path,
                                     (unsigned long long)magic);
        init_region(R);
        LOG_INFO("created shared region %s (%zu bytes)", path, sizeof *R);
    } else if (R->abi_major != VGPU_REGION_ABI_MAJOR || R->region_size != sizeof *R) {
        ofd_lock(fd, (off_t)VGPU_LOCK_INIT, F_UNLCK, 0);
        munmap(p, sizeof *R);
        close(fd);
        return anon_region("incompatible region ABI version");
    } else {
        check_config(R);
    }
    g_fd = fd;
    vgpu_R = R;
    claim_slot(R);
    ofd_lock(fd, (off_t)VGPU_LOCK_INIT, F_UNLCK, 0);
    return R;
}

struct vgpu_region *vgpu_region(void) {
    if (likely(atomic_load_explicit(&g_attached, memory_order_acquire))) return vgpu_R;
    vgpu_init();
    pthread_mutex_lock(&g_attach_mu);
    if (!atomic_load(&g_attached)) {
        struct vgpu_region *R = attach();
        if (!vgpu_R) {
            vgpu_R = R;
            claim_slot(R);
        }
        atomic_store_explicit(&g_attached, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_attach_mu);
    return vgpu_R;
}

int vgpu_slot_index(void) { return g_slot; }

int vgpu_host_pid(void) {
    struct vgpu_region *R = vgpu_R;
    if (R && g_slot >= 0 && R->slot[g_slot].hostpid > 0) return R->slot[g_slot].hostpid;
    return (int)getpid();
}

void vgpu_slot_set_hostpid(int pid) {
    struct vgpu_region *R = vgpu_R;
    if (R && g_slot >= 0) R->slot[g_slot].hostpid = pid;
}

int vgpu_region_dev_for_uuid(const char *uuid, int want) {
    struct vgpu_region *R = vgpu_region();
    /* with the file's card list, indexes past it are for cards the container was not given: their
     * limit denies (vgpu_config_load) */
    int first = vgpu_cfg.from_file ? vgpu_cfg.nuuid : 0, idx = -1, free_i = -1;
    region_lock(R);
    for (int i = 0; i < VGPU_MAX_DEV && idx < 0; i++) {
        if (!strncmp(R->dev[i].uuid, uuid, sizeof R->dev[i].uuid)) idx = i;
        else if (!R->dev[i].uuid[0] && i >= first && free_i < 0) free_i = i;
    }
    if (idx < 0) {
        idx = want >= first && want < VGPU_MAX_DEV && !R->dev[want].uuid[0] ? want : free_i;
        if (idx >= 0) snprintf(R->dev[idx].uuid, sizeof R->dev[idx].uuid, "%s", uuid);
    }
    region_unlock(R);
    return idx;
}

int vgpu_is_leader_try(void) {
    if (g_leader) return 1;
    struct vgpu_region *R = vgpu_R;
    if (!R) return 0;
    if (g_fd < 0) return g_leader = 1; /* private region: we are the only process */
    if (ofd_lock(g_fd, (off_t)VGPU_LOCK_LEADER, F_WRLCK, 0) == 0) {
        g_leader = 1;
        atomic_store(&R->leader_pid, (uint32_t)getpid());
        LOG_DEBUG("limiter leader for %s", vgpu_cfg.cache_path);
    }
    return g_leader;
}

static void oom_log(int dev, uint64_t req, uint64_t used, uint64_t limit, const char *what) {
    static _Atomic uint64_t last;
    uint64_t now = vgpu_now_ns(), l = atomic_load(&last);
    if (now - l < 1000000000ULL && l) return; /* at most one line per second */
    atomic_store(&last, now);
    LOG_ERR("OOM dev=%d %s req=%.1fMiB used=%.1fMiB limit=%.1fMiB (CUDA_DEVICE_MEMORY_LIMIT) -> "
            "CUDA_ERROR_OUT_OF_MEMORY",
            dev, what, req / 1048576.0, used / 1048576.0, limit / 1048576.0);
}

static void charge_locked(struct vgpu_region *R, int dev, uint64_t bytes) {
    uint64_t u = atomic_load(&R->dev[dev].used) + bytes;
    atomic_store(&R->dev[dev].used, u);
    if (u > atomic_load(&R->dev[dev].peak)) atomic_store(&R->dev[dev].peak, u);
    if (g_slot >= 0) atomic_store(&R->slot[g_slot].used[dev], atomic_load(&R->slot[g_slot].used[dev]) + bytes);
}

int vgpu_mem_reserve(int dev, uint64_t bytes, const char *what) {
    struct vgpu_region *R = vgpu_region();
    if (dev < 0 || dev >= VGPU_MAX_DEV) return 0;
    region_lock(R);
    uint64_t lim = vgpu_mem_limit(R, dev), used = atomic_load(&R->dev[dev].used);
    if (lim && (bytes > lim || used > lim - bytes)) {
        if (reap_dead_locked(R)) used = atomic_load(&R->dev[dev].used);
        if (bytes > lim || used > lim - bytes) {
            region_unlock(R);
            oom_log(dev, bytes, used, lim, what);
            return -1;
        }
    }
    charge_locked(R, dev, bytes);
    region_unlock(R);
    return 0;
}

void vgpu_mem_force(int dev, uint64_t bytes) {
    struct vgpu_region *R = vgpu_region();
    if (dev < 0 || dev >= VGPU_MAX_DEV || !bytes) return;
    region_lock(R);
    charge_locked(R, dev, bytes);
    region_unlock(R);
}

void vgpu_mem_unreserve(int dev, uint64_t bytes) {
    struct vgpu_region *R = vgpu_region();
    if (dev < 0 || dev >= VGPU_MAX_DEV || !bytes) return;
    region_lock(R);
    uint64_t u = atomic_load(&R->dev[dev].used);
    atomic_store(&R->dev[dev].used, u > bytes ? u - bytes : 0);
    if (g_slot >= 0) {
        uint64_t s = atomic_load(&R->slot[g_slot].used[dev]);
        atomic_store(&R->slot[g_slot].used[dev], s > bytes ? s - bytes : 0);
    }
    region_unlock(R);
}

void vgpu_region_atfork_child(void) {
    /* The child shares the parent's open file description, hence its slot and leader locks:
     * drop our reference and claim a fresh slot on first use. */
    pthread_mutex_init(&g_attach_mu, NULL);
    if (g_fd >= 0) close(g_fd);
    if (vgpu_R && g_fd >= 0) munmap(vgpu_R, sizeof *vgpu_R);
    g_fd = -1;
    g_slot = -1;
    g_leader = 0;
    vgpu_R = NULL;
    atomic_store(&g_attached, 0);
}

void vgpu_region_atfork_prepare(void) { pthread_mutex_lock(&g_attach_mu); }
void vgpu_region_atfork_parent(void) { pthread_mutex_unlock(&g_attach_mu); }
