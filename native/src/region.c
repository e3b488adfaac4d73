/* The shared region: one file per container, mapped by every process. Admission is
 * reserve-then-commit under a robust process-shared mutex; liveness is a kernel-released
 * open-file-description lock per slot, so a SIGKILLed process is reclaimed exactly once and a
 * recycled PID can never keep a dead slot alive. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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
_Static_assert(offsetof(struct vgpu_region, monitor_ns) == 64, "region layout");
_Static_assert(offsetof(struct vgpu_region, ctl_ns) == 72, "region layout");
_Static_assert(offsetof(struct vgpu_region, ctl_id) == 80, "region layout");
_Static_assert(offsetof(struct vgpu_region, ctl_blind) == 88, "region layout");
_Static_assert(offsetof(struct vgpu_region, lock) == 128, "region layout");
_Static_assert(offsetof(struct vgpu_dev, used) == 8, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, sm_limit) == 32, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, uuid) == 40, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, tokens) == 128, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, util_x100) == 192, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, throttled_ns) == 200, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, sampled_ns) == 208, "dev layout");
_Static_assert(offsetof(struct vgpu_dev, sampled_n) == 216, "dev layout");
_Static_assert(offsetof(struct vgpu_slot, used) == 24, "slot layout");
_Static_assert(offsetof(struct vgpu_slot, busy_ns) == 152, "slot layout");
_Static_assert(offsetof(struct vgpu_slot, want_ns) == 160, "slot layout");
_Static_assert(offsetof(struct vgpu_dev, contenders) == 224, "dev layout");
_Static_assert(offsetof(struct vgpu_region, dev) == 192, "region layout");
_Static_assert(offsetof(struct vgpu_region, slot) == 4288, "region layout");
_Static_assert(sizeof(struct vgpu_region) == 200896, "region layout");

struct vgpu_region *vgpu_R;
static int g_fd = -1;
static int g_slot = -1;
static _Atomic int g_attached;
static pthread_mutex_t g_attach_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_leader;
static _Atomic int g_fail_closed; /* see region_damaged() */
static void *_Atomic g_map_base;  /* the file-backed mapping, for the SIGBUS handler */
static struct sigaction g_old_bus;

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

/* The region is writable by every process of the container, so what it holds is validated and every
 * wait on it is bounded: a lock word naming a thread that is gone (written there, or left by a
 * process the robust list could not cover) is repaired; one naming a live thread for longer than
 * LOCK_WAIT_S fails closed (the caller refuses the allocation) instead of hanging. */
#define LOCK_WAIT_S 2
#define FUTEX_TID_MASK_ 0x3fffffffu

static int lock_result(struct vgpu_region *R, int r) {
    if (r == EOWNERDEAD) {
        LOG_WARN("a process died holding the region lock; reconciling usage from the slot table");
        reconcile_locked(R);
        pthread_mutex_consistent(&R->lock);
        return 0;
    }
    return r;
}

static int tid_gone(int tid) { return tid > 0 && kill(tid, 0) < 0 && errno == ESRCH; }

static void init_mutex(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

/* 0 with the lock held, else an errno value (the caller fails closed) */
static int region_lock(struct vgpu_region *R) {
    int tid = 0, repaired = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += LOCK_WAIT_S;
        int r = lock_result(R, pthread_mutex_timedlock(&R->lock, &dl));
        if (r == 0 && repaired) reconcile_locked(R);
        if (r != ETIMEDOUT) {
            if (r) LOG_ERR("the region lock of %s cannot be taken (%s); refusing rather than waiting",
                           vgpu_cfg.cache_path, strerror(r));
            return r;
        }
        /* held for LOCK_WAIT_S: repair it if its owner is gone, under the (kernel-released) init lock;
         * a word that changed meanwhile (another process repaired it) is simply tried again */
        unsigned word = __atomic_load_n((unsigned *)&R->lock, __ATOMIC_ACQUIRE);
        tid = (int)(word & FUTEX_TID_MASK_);
        if (g_fd < 0 || (tid && !tid_gone(tid))) break;
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)VGPU_LOCK_INIT, .l_len = 1};
        if (!tid || fcntl(g_fd, F_OFD_SETLK, &fl) < 0) continue;
        if (__atomic_load_n((unsigned *)&R->lock, __ATOMIC_ACQUIRE) == word) {
            LOG_ERR("the region lock of %s names thread %d, which does not exist; re-initialising it and "
                    "rebuilding usage from the slot table",
                    vgpu_cfg.cache_path, tid);
            init_mutex(&R->lock);
            repaired = 1;
        }
        fl.l_type = F_UNLCK;
        fcntl(g_fd, F_OFD_SETLK, &fl);
    }
    LOG_ERR("the region lock of %s has been held by thread %d for over %d s; refusing rather than waiting",
            vgpu_cfg.cache_path, tid, LOCK_WAIT_S);
    return ETIMEDOUT;
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
    atomic_store(&s->busy_ns, 0);
    atomic_store(&s->want_ns, 0);
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
    if (!any || region_lock(R)) return 0;
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
    init_mutex(&R->lock);
    atomic_thread_fence(memory_order_release);
    __atomic_store_n(&R->magic, VGPU_REGION_MAGIC, __ATOMIC_RELEASE);
}

static struct vgpu_region *anon_region(const char *why) {
    if (vgpu_cfg.from_file) { /* the container's limits hold only in the shared region: fail closed */
        LOG_ERR("shared region %s unusable (%s); refusing every allocation of this process", vgpu_cfg.cache_path,
                why);
        atomic_store(&g_fail_closed, 1);
    } else {
        LOG_ERR("shared region %s unusable (%s); limits apply to this process only", vgpu_cfg.cache_path, why);
    }
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
    if (region_lock(R)) {
        LOG_ERR("no process slot in %s: its lock is unusable", vgpu_cfg.cache_path);
        return;
    }
    reap_dead_locked(R);
    for (int i = 0; i < VGPU_MAX_SLOTS; i++) {
        if (atomic_load(&R->slot[i].state) != SLOT_FREE) continue;
        if (g_fd >= 0 && ofd_lock(g_fd, (off_t)VGPU_LOCK_SLOT(i), F_WRLCK, 0) != 0) continue;
        struct vgpu_slot *s = &R->slot[i];
        for (int d = 0; d < VGPU_MAX_DEV; d++) atomic_store(&s->used[d], 0);
        atomic_store(&s->busy_ns, 0);
        atomic_store(&s->want_ns, 0);
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

/* A process of the container that truncates the region file would make every other process's next
 * access to the mapping die with SIGBUS. The handler recognises a fault inside the mapping, gives the
 * file its size back (the lost content makes this process fail closed: region_damaged) and lets the
 * access run again; any other SIGBUS goes to the previous disposition. */
static void on_sigbus(int sig, siginfo_t *si, void *uc) {
    char *base = atomic_load(&g_map_base), *a = si ? (char *)si->si_addr : NULL;
    if (base && si && si->si_code > 0 && a >= base && a < base + sizeof(struct vgpu_region)) {
        int saved = errno;
        atomic_store(&g_fail_closed, 1);
        if (g_fd < 0 || ftruncate(g_fd, (off_t)sizeof(struct vgpu_region)) < 0)
            mmap(base, sizeof(struct vgpu_region), PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
        static const char msg[] = "[libvgpu ERROR] the shared region was truncated under this process; it is "
                                  "restored to its size and this process refuses every allocation\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        errno = saved;
        return;
    }
    if (g_old_bus.sa_flags & SA_SIGINFO) {
        if (g_old_bus.sa_sigaction) {
            g_old_bus.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (g_old_bus.sa_handler != SIG_DFL && g_old_bus.sa_handler != SIG_IGN) {
        g_old_bus.sa_handler(sig);
        return;
    }
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(SIGBUS, &dfl, NULL);
    if (!si || si->si_code <= 0) raise(SIGBUS); /* sent, not a fault: deliver it again */
    /* a fault: the access runs again and takes the default action */
}

static void guard_mapping(void *base) {
    static _Atomic int installed;
    atomic_store(&g_map_base, base);
    if (atomic_exchange(&installed, 1)) return;
    struct sigaction sa = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_ONSTACK};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &g_old_bus) < 0) LOG_WARN("cannot guard the region mapping against SIGBUS");
}

/* the init lock, waited for LOCK_WAIT_S at most (its holder may be stopped, or a tenant's) */
static int init_lock(int fd) {
    for (int i = 0; i < LOCK_WAIT_S * 100; i++) {
        if (ofd_lock(fd, (off_t)VGPU_LOCK_INIT, F_WRLCK, 0) == 0) return 0;
        if (errno != EAGAIN && errno != EACCES) return -1;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

static struct vgpu_region *attach(void) {
    struct vgpu_region *R = NULL;
    const char *path = vgpu_cfg.cache_path;
    if (!*path) return anon_region("no region path: the configuration file is unusable");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return anon_region(strerror(errno));
    if (init_lock(fd) < 0) {
        close(fd);
        return anon_region("its init lock is held by a process that does not let go");
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
    guard_mapping(p);
    uint64_t magic = __atomic_load_n(&R->magic, __ATOMIC_ACQUIRE);
    if (magic != VGPU_REGION_MAGIC) {
        if (magic != 0)
            LOG_WARN("%s has an unknown format (magic %llx); re-initialising it", path,
                                     (unsigned long long)magic);
        init_region(R);
        LOG_INFO("created shared region %s (%zu bytes)", path, sizeof *R);
    } else if (R->abi_major != VGPU_REGION_ABI_MAJOR || R->region_size != sizeof *R) {
        ofd_lock(fd, (off_t)VGPU_LOCK_INIT, F_UNLCK, 0);
        atomic_store(&g_map_base, NULL);
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

int vgpu_region_slot_of_pid(unsigned pid) {
    struct vgpu_region *R = vgpu_region();
    uint32_t hwm = atomic_load(&R->slot_hwm);
    for (uint32_t i = 0; i < hwm && i < VGPU_MAX_SLOTS; i++) {
        if (atomic_load(&R->slot[i].state) != SLOT_LIVE) continue;
        int32_t hp = R->slot[i].hostpid; /* known host PID: only it counts; else the same namespace */
        if (hp > 0 ? (unsigned)hp == pid : (unsigned)R->slot[i].pid == pid) return (int)i;
    }
    return -1;
}

int vgpu_region_owns_pid(unsigned pid) { return vgpu_region_slot_of_pid(pid) >= 0; }

void vgpu_slot_set_hostpid(int pid) {
    struct vgpu_region *R = vgpu_R;
    if (R && g_slot >= 0) R->slot[g_slot].hostpid = pid;
}

int vgpu_region_dev_for_uuid(const char *uuid, int want) {
    struct vgpu_region *R = vgpu_region();
    /* with the file's card list, indexes past it are for cards the container was not given: their
     * limit denies (vgpu_config_load) */
    int first = vgpu_cfg.from_file ? vgpu_cfg.nuuid : 0, idx = -1, free_i = -1;
    if (region_lock(R)) return -1;
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

/* Fail closed: set when this process's view of the shared region is damaged (truncated under it,
 * re-initialised by a tenant) or, with the configuration file, when the shared region is unusable.
 * Every allocation is then refused; frees still work. */
static int region_damaged(struct vgpu_region *R) {
    if (!atomic_load_explicit(&g_fail_closed, memory_order_relaxed) &&
        __atomic_load_n(&R->magic, __ATOMIC_ACQUIRE) == VGPU_REGION_MAGIC)
        return 0;
    static _Atomic uint64_t last;
    uint64_t now = vgpu_now_ns(), l = atomic_load(&last);
    if (!l || now - l >= 1000000000ULL) {
        atomic_store(&last, now);
        LOG_ERR("the shared region %s is damaged or unusable (truncated, overwritten or not shared); refusing "
                "every allocation of this process",
                vgpu_cfg.cache_path);
    }
    return 1;
}

int vgpu_mem_reserve(int dev, uint64_t bytes, const char *what) {
    struct vgpu_region *R = vgpu_region();
    if (dev < 0 || dev >= VGPU_MAX_DEV) return 0;
    if (region_damaged(R) || region_lock(R)) return -1;
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
    if (region_lock(R)) { /* unusable lock: still account, without it */
        atomic_fetch_add(&R->dev[dev].used, bytes);
        if (g_slot >= 0) atomic_fetch_add(&R->slot[g_slot].used[dev], bytes);
        return;
    }
    charge_locked(R, dev, bytes);
    region_unlock(R);
}

static void sub_clamped(_Atomic uint64_t *v, uint64_t n) {
    uint64_t cur = atomic_load(v);
    while (!atomic_compare_exchange_weak(v, &cur, cur > n ? cur - n : 0)) {
    }
}

void vgpu_mem_unreserve(int dev, uint64_t bytes) {
    struct vgpu_region *R = vgpu_region();
    if (dev < 0 || dev >= VGPU_MAX_DEV || !bytes) return;
    int locked = region_lock(R) == 0; /* without the lock: the same arithmetic, lock-free */
    sub_clamped(&R->dev[dev].used, bytes);
    if (g_slot >= 0) sub_clamped(&R->slot[g_slot].used[dev], bytes);
    if (locked) region_unlock(R);
}

void vgpu_region_atfork_child(void) {
    /* The child shares the parent's open file description, hence its slot and leader locks:
     * drop our reference and claim a fresh slot on first use. */
    pthread_mutex_init(&g_attach_mu, NULL);
    if (g_fd >= 0) close(g_fd);
    if (vgpu_R && g_fd >= 0) munmap(vgpu_R, sizeof *vgpu_R);
    atomic_store(&g_map_base, NULL);
    g_fd = -1;
    g_slot = -1;
    g_leader = 0;
    vgpu_R = NULL;
    atomic_store(&g_attached, 0);
}

void vgpu_region_atfork_prepare(void) { pthread_mutex_lock(&g_attach_mu); }
void vgpu_region_atfork_parent(void) { pthread_mutex_unlock(&g_attach_mu); }
