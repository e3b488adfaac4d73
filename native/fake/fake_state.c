#define _GNU_SOURCE
#include "fake_state.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static struct fk_state *g_S;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic int g_me = -1;
static pthread_mutex_t g_me_mu = PTHREAD_MUTEX_INITIALIZER;

uint64_t fk_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
uint64_t fk_real_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t fk_env_size(const char *name, uint64_t dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return v;
}

static struct fk_card g_cards[FK_MAX_DEV];
static int g_ncards;
static pthread_once_t g_cards_once = PTHREAD_ONCE_INIT;

static void load_cards(void) {
    const char *path = getenv("FAKECUDA_CARDS");
    if (!path || !*path) return;
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "[fakecuda] FAKECUDA_CARDS=%s: %s\n", path, strerror(errno));
        return;
    }
    char ln[512];
    int lineno = 0;
    while (g_ncards < FK_MAX_DEV && fgets(ln, sizeof ln, f)) {
        lineno++;
        ln[strcspn(ln, "\r\n")] = 0;
        if (!ln[0]) continue;
        struct fk_card *c = &g_cards[g_ncards];
        char *save = NULL, *uuid = strtok_r(ln, "\t", &save), *mib = strtok_r(NULL, "\t", &save);
        char *sm = strtok_r(NULL, "\t", &save), *name = strtok_r(NULL, "", &save), *end = NULL;
        unsigned long long m = mib ? strtoull(mib, &end, 10) : 0;
        if (!uuid || !name || !sm || !m || !end || *end) {
            fprintf(stderr, "[fakecuda] %s:%d: expected <uuid>\\t<MiB>\\t<SMs>\\t<name>\n", path, lineno);
            break;
        }
        snprintf(c->uuid, sizeof c->uuid, "%s", uuid);
        snprintf(c->name, sizeof c->name, "%s", name);
        c->total = m << 20;
        c->sm_count = (uint32_t)strtoul(sm, NULL, 10);
        g_ncards++;
    }
    fclose(f);
}

int fk_cards(const struct fk_card **out) {
    pthread_once(&g_cards_once, load_cards);
    if (out) *out = g_cards;
    return g_ncards;
}

static void init_state(struct fk_state *S) {
    memset(S, 0, sizeof *S);
    const struct fk_card *cards;
    int ncards = fk_cards(&cards);
    S->ndev = ncards ? (uint32_t)ncards : (uint32_t)fk_env_size("FAKECUDA_DEVICES", 1);
    if (S->ndev < 1) S->ndev = 1;
    if (S->ndev > FK_MAX_DEV) S->ndev = FK_MAX_DEV;
    S->driver_version = (int32_t)fk_env_size("FAKECUDA_DRIVER_VERSION", 13000);
    for (uint32_t d = 0; d < S->ndev; d++) {
        S->dev[d].total = ncards ? cards[d].total : fk_env_size("FAKECUDA_TOTAL_MEM", 16ULL << 30);
        S->dev[d].sm_count = ncards && cards[d].sm_count ? cards[d].sm_count
                                                         : (uint32_t)fk_env_size("FAKECUDA_SM_COUNT", 108);
    }
    atomic_store(&S->magic, FK_MAGIC);
}

static void open_state(void) {
    const char *path = getenv("FAKECUDA_STATE");
    if (path && *path) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0 && flock(fd, LOCK_EX) == 0) {
            if (ftruncate(fd, sizeof(struct fk_state)) == 0) {
                void *p = mmap(NULL, sizeof(struct fk_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (p != MAP_FAILED) {
                    g_S = p;
                    if (atomic_load(&g_S->magic) != FK_MAGIC) init_state(g_S);
                }
            }
            flock(fd, LOCK_UN);
        }
        if (fd >= 0) close(fd);
        if (!g_S) fprintf(stderr, "[fakecuda] cannot use FAKECUDA_STATE=%s: %s\n", path, strerror(errno));
    }
    if (!g_S) {
        void *p = mmap(NULL, sizeof(struct fk_state), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) abort();
        g_S = p;
        init_state(g_S);
    }
}

static void child(void) {
    atomic_store(&g_me, -1);
    pthread_mutex_init(&g_me_mu, NULL);
}

struct fk_state *fk_state(void) {
    if (!g_S) {
        pthread_once(&g_once, open_state);
        static _Atomic int reg;
        if (!atomic_exchange(&reg, 1)) pthread_atfork(NULL, NULL, child);
    }
    return g_S;
}

/* The PID this process is listed under, as a real driver lists it: in the host's PID namespace
 * (the outermost NSpid the procfs shows), plus FAKECUDA_PID_OFFSET, which makes every process look
 * as if it ran in a PID namespace whose PIDs NVML does not report. */
static int64_t pid_offset(void) { return (int64_t)fk_env_size("FAKECUDA_PID_OFFSET", 0); }
int32_t fk_pid(void) {
    long pid = (long)getpid();
    FILE *f = fopen("/proc/self/status", "re");
    if (f) {
        char ln[256];
        while (fgets(ln, sizeof ln, f))
            if (!strncmp(ln, "NSpid:", 6)) {
                pid = strtol(ln + 6, NULL, 10);
                break;
            }
        fclose(f);
    }
    return (int32_t)(pid + pid_offset());
}
static int alive(int32_t pid) {
    pid = (int32_t)(pid - pid_offset());
    if (pid <= 0) return 0;
    char path[32];
    snprintf(path, sizeof path, "/proc/%d", (int)pid);
    return access(path, F_OK) == 0 || kill(pid, 0) == 0 || errno != ESRCH;
}

static void release_proc(struct fk_state *S, struct fk_proc *p) {
    for (int d = 0; d < FK_MAX_DEV; d++) {
        uint64_t m = atomic_exchange(&p->mem[d], 0);
        if (m) atomic_fetch_sub(&S->dev[d].used, m);
    }
}

/* the real driver frees a dead process's memory; so does the fake */
void fk_reap(struct fk_state *S) {
    for (int i = 0; i < FK_MAX_PROC; i++) {
        int32_t pid = atomic_load(&S->proc[i].pid);
        if (pid > 0 && !alive(pid) && atomic_compare_exchange_strong(&S->proc[i].pid, &pid, -1)) {
            release_proc(S, &S->proc[i]);
            atomic_store(&S->proc[i].pid, 0);
        }
    }
}

struct fk_proc *fk_me(void) {
    struct fk_state *S = fk_state();
    int me = atomic_load(&g_me);
    if (me >= 0) return &S->proc[me];
    pthread_mutex_lock(&g_me_mu);
    me = atomic_load(&g_me);
    if (me < 0) {
        int32_t pid = fk_pid();
        for (int pass = 0; pass < 2 && me < 0; pass++) {
            if (pass) fk_reap(S);
            for (int i = 0; i < FK_MAX_PROC && me < 0; i++) {
                int32_t z = 0;
                if (atomic_load(&S->proc[i].pid) == pid) me = i; /* stale slot of a recycled pid */
                else if (atomic_compare_exchange_strong(&S->proc[i].pid, &z, -1)) me = i;
                if (me == i) {
                    struct fk_proc *p = &S->proc[i];
                    release_proc(S, p);
                    for (int d = 0; d < FK_MAX_DEV; d++) atomic_store(&p->busy_total[d], 0);
                    atomic_store(&p->last_end, 0);
                    atomic_store(&p->head, 0);
                    memset((void *)p->ring, 0, sizeof p->ring);
                    atomic_store(&p->pid, pid);
                }
            }
        }
        if (me < 0) {
            fprintf(stderr, "[fakecuda] process table full\n");
            abort();
        }
        atomic_store(&g_me, me);
    }
    pthread_mutex_unlock(&g_me_mu);
    return &S->proc[me];
}

uint64_t fk_busy_between(struct fk_proc *p, int dev, uint64_t t0, uint64_t t1) {
    uint64_t head = atomic_load(&p->head), busy = 0;
    uint64_t n = head < FK_RING ? head : FK_RING;
    for (uint64_t k = 0; k < n; k++) {
        struct fk_iv *iv = &p->ring[(head - 1 - k) % FK_RING];
        if ((int)atomic_load(&iv->dev) != dev) continue;
        uint64_t s = atomic_load(&iv->s), e = atomic_load(&iv->e);
        if (e <= t0 && s < t0 && k > 64) break; /* older entries end earlier still */
        uint64_t a = s > t0 ? s : t0, b = e < t1 ? e : t1;
        if (b > a) busy += b - a;
    }
    return busy;
}

/* FAKECUDA_FAIL="cuMemAlloc_v2@3=2,cuCtxGetDevice@*=201": the 3rd call of cuMemAlloc_v2 returns 2 */
#define MAX_RULES 16
static struct rule {
    char fn[64];
    long nth; /* 0 = every call */
    int code;
    _Atomic long calls;
} g_rules[MAX_RULES];
static int g_nrules = -1;
static pthread_once_t g_rules_once = PTHREAD_ONCE_INIT;

static void parse_rules(void) {
    g_nrules = 0;
    const char *s = getenv("FAKECUDA_FAIL");
    if (!s) return;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && g_nrules < MAX_RULES;
         tok = strtok_r(NULL, ",", &save)) {
        char *at = strchr(tok, '@'), *eq = strchr(tok, '=');
        if (!at || !eq || eq < at) continue;
        struct rule *r = &g_rules[g_nrules++];
        snprintf(r->fn, sizeof r->fn, "%.*s", (int)(at - tok), tok);
        r->nth = at[1] == '*' ? 0 : strtol(at + 1, NULL, 10);
        r->code = (int)strtol(eq + 1, NULL, 10);
    }
}

int fk_fault(const char *fn) {
    pthread_once(&g_rules_once, parse_rules);
    for (int i = 0; i < g_nrules; i++) {
        if (strcmp(g_rules[i].fn, fn)) continue;
        long c = atomic_fetch_add(&g_rules[i].calls, 1) + 1;
        if (!g_rules[i].nth || c == g_rules[i].nth) return g_rules[i].code;
    }
    return 0;
}

static struct fk_noise g_noise;
static pthread_once_t g_noise_once = PTHREAD_ONCE_INIT;
static void parse_noise(void) {
    g_noise.seed = fk_env_size("FAKECUDA_SEED", 1);
    g_noise.epoch_ns = fk_env_size("FAKECUDA_CLOCK_EPOCH_MS", 250) * 1000000ULL;
    if (!g_noise.epoch_ns) g_noise.epoch_ns = 1000000;
    double *f[] = {&g_noise.jitter, &g_noise.drift, &g_noise.nvml};
    const char *names[] = {"FAKECUDA_KERNEL_JITTER", "FAKECUDA_CLOCK_DRIFT", "FAKECUDA_NVML_NOISE"};
    for (int i = 0; i < 3; i++) {
        uint64_t pct = fk_env_size(names[i], 0);
        *f[i] = (double)(pct > 90 ? 90 : pct) / 100.0;
    }
}
const struct fk_noise *fk_noise(void) {
    pthread_once(&g_noise_once, parse_noise);
    return &g_noise;
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
double fk_draw(uint64_t stream, uint64_t index) {
    uint64_t h = mix64(mix64(fk_noise()->seed ^ mix64(stream)) ^ index);
    return (double)(h >> 11) / 4503599627370496.0 - 1.0; /* 53 bits -> [0, 2) -> [-1, 1) */
}
