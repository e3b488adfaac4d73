/* Logging and strict environment parsing. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vgpu.h"

int vgpu_log_level = VLOG_WARN;
static int g_log_fd = 2;

void vgpu_log_init(void) {
    const char *s = getenv("LIBCUDA_LOG_LEVEL");
    if (s && *s) {
        uint32_t v;
        if (vgpu_parse_percent(s, &v) == 0 && v <= 9)
            vgpu_log_level = (int)v;
        else
            vgpu_log(VLOG_ERROR, "LIBCUDA_LOG_LEVEL=\"%s\" is not a number 0..9; using 2", s);
    }
}

void vgpu_log(int level, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "ERROR", "WARN", "INFO", "DEBUG"};
    char buf[768];
    int n = snprintf(buf, sizeof buf, "[libvgpu %s pid=%d] ", names[level < 0 ? 0 : level > 4 ? 4 : level],
                     (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) return;
    size_t len = (size_t)n + ((size_t)m < sizeof buf - (size_t)n - 1 ? (size_t)m : sizeof buf - (size_t)n - 2);
    buf[len++] = '\n';
    ssize_t w = write(g_log_fd, buf, len); /* one write: lines from threads/processes don't interleave */
    (void)w;
}

int vgpu_parse_size(const char *s, uint64_t *out) {
    if (!s) return -1;
    while (isspace((unsigned char)*s)) s++;
    if (!isdigit((unsigned char)*s)) return -1; /* no sign, no empty */
    uint64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
        s++;
    }
    unsigned shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    case 't': case 'T': shift = 40; s++; break;
    default: break;
    }
    if (shift && *s == 'i') s++;
    if (*s == 'b' || *s == 'B') s++;
    while (isspace((unsigned char)*s)) s++;
    if (*s) return -1;
    if (shift && v > (UINT64_MAX >> shift)) return -1;
    *out = v << shift;
    return 0;
}

int vgpu_parse_percent(const char *s, uint32_t *out) {
    if (!s) return -1;
    while (isspace((unsigned char)*s)) s++;
    if (!isdigit((unsigned char)*s)) return -1;
    uint64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > 1000000) return -1;
        s++;
    }
    if (*s == '%') s++;
    while (isspace((unsigned char)*s)) s++;
    if (*s) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* ---------------------------------------------------------------- configuration source
 * In a pod the device plugin mounts VGPU_CONF_PATH read-only: limits, core policy, priority, the
 * region's location and the cards' order come from it and the environment is not consulted for them
 * (a process may change its own environment, or start a child with an empty one). Without the file
 * (outside a cluster) the environment is the source. */
#define CONF_MAX 64
static char g_conf_buf[16384];
static struct {
    const char *k, *v;
} g_conf[CONF_MAX];
static int g_nconf;
static int g_from_file;

/* 1 = file read, 0 = no file, -1 = file present but unusable */
static int conf_read(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT || errno == ENOTDIR ? 0 : -1;
    size_t n = 0;
    ssize_t r;
    while (n < sizeof g_conf_buf - 1 && (r = read(fd, g_conf_buf + n, sizeof g_conf_buf - 1 - n)) != 0) {
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            close(fd);
            return -1;
        }
        n += (size_t)r;
    }
    close(fd);
    if (n == sizeof g_conf_buf - 1) return -1; /* too large: not a file the device plugin wrote */
    g_conf_buf[n] = 0;
    for (char *save = NULL, *ln = strtok_r(g_conf_buf, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        while (isspace((unsigned char)*ln)) ln++;
        if (!*ln || *ln == '#') continue;
        char *eq = strchr(ln, '=');
        if (!eq || g_nconf == CONF_MAX) return -1;
        char *ke = eq;
        while (ke > ln && isspace((unsigned char)ke[-1])) ke--;
        *ke = 0;
        char *v = eq + 1, *ve = v + strlen(v);
        while (ve > v && isspace((unsigned char)ve[-1])) *--ve = 0;
        g_conf[g_nconf].k = ln;
        g_conf[g_nconf++].v = v;
    }
    return 1;
}

/* an enforcement setting: from the file when there is one (never the environment), else the env */
static const char *cfg_get(const char *name) {
    if (!g_from_file) return getenv(name);
    const char *v = NULL;
    for (int i = 0; i < g_nconf; i++)
        if (!strcmp(g_conf[i].k, name)) v = g_conf[i].v; /* the last entry wins */
    return v;
}
/* a debugging knob: honoured only outside a pod (no configuration file) */
static const char *knob_get(const char *name) {
    const char *v = getenv(name);
    if (g_from_file && v && *v) {
        LOG_WARN("%s is ignored: %s governs this container", name, VGPU_CONF_PATH);
        return NULL;
    }
    return v;
}
const char *vgpu_knob(const char *name) { return knob_get(name); }

static void load_mem(const char *name, uint64_t *dst) {
    const char *s = cfg_get(name);
    if (!s || !*s) return;
    uint64_t v;
    if (vgpu_parse_size(s, &v) == 0 && v > 0) {
        *dst = v;
    } else if (vgpu_parse_size(s, &v) == 0) {
        LOG_ERR("%s=\"%s\" is a zero memory limit: a misconfiguration (a card registered with 0 MiB?); refusing "
                "every allocation on the affected device(s) rather than running unlimited",
                name, s);
        *dst = VGPU_LIMIT_DENY;
    } else {
        LOG_ERR("%s=\"%s\" is malformed (want e.g. 8192m, 8g, 8Gi or bytes); refusing every allocation on "
                "the affected device(s) rather than running unlimited",
                name, s);
        *dst = VGPU_LIMIT_DENY;
    }
}

static void load_sm(const char *name, uint32_t *dst) {
    const char *s = cfg_get(name);
    if (!s || !*s) return;
    uint32_t v;
    if (vgpu_parse_percent(s, &v) == 0) {
        *dst = v;
    } else {
        LOG_ERR("%s=\"%s\" is malformed (want a percentage 0..100); using the smallest share, 1%%", name, s);
        *dst = 1;
    }
}

/* NVIDIA_VISIBLE_DEVICES of the file: the container's cards in the order of the _<i> limits */
static void load_uuids(struct vgpu_config *c) {
    const char *s = g_from_file ? cfg_get("NVIDIA_VISIBLE_DEVICES") : NULL;
    if (!s) return;
    for (const char *p = s; *p && c->nuuid < VGPU_MAX_DEV;) {
        size_t n = strcspn(p, ",");
        if (n >= 8 && n < sizeof c->uuid[0] && !strncmp(p, "GPU-", 4)) memcpy(c->uuid[c->nuuid++], p, n);
        p += n + (p[n] == ',');
    }
}

void vgpu_config_load(struct vgpu_config *c) {
    memset(c, 0, sizeof *c);
    int fr = conf_read(VGPU_CONF_PATH);
    g_from_file = fr != 0;
    c->from_file = g_from_file;
    uint64_t all = 0;
    uint32_t sm_all = 0;
    if (fr < 0) {
        LOG_ERR("%s exists but cannot be read or parsed; refusing every allocation", VGPU_CONF_PATH);
        g_nconf = 0;
        all = VGPU_LIMIT_DENY;
    }
    load_mem("CUDA_DEVICE_MEMORY_LIMIT", &all);
    load_sm("CUDA_DEVICE_SM_LIMIT", &sm_all);
    for (int i = 0; i < VGPU_MAX_DEV; i++) {
        char name[64];
        c->mem_limit[i] = all;
        snprintf(name, sizeof name, "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        load_mem(name, &c->mem_limit[i]);
        c->sm_limit[i] = sm_all;
        snprintf(name, sizeof name, "CUDA_DEVICE_SM_LIMIT_%d", i);
        load_sm(name, &c->sm_limit[i]);
    }
    load_uuids(c);
    /* with the file, a card without a memory limit is refused, never unlimited: one it lists (or
     * card 0 when it lists none) is a file that does not describe the slice; one past its list is a
     * card the container was not given */
    for (int i = 0; g_from_file && i < VGPU_MAX_DEV; i++) {
        if (c->mem_limit[i]) continue;
        c->mem_limit[i] = VGPU_LIMIT_DENY;
        if (fr > 0 && i < (c->nuuid ? c->nuuid : 1))
            LOG_ERR("%s sets no CUDA_DEVICE_MEMORY_LIMIT_%d (nor CUDA_DEVICE_MEMORY_LIMIT) for card %d; refusing "
                    "its allocations rather than running unlimited",
                    VGPU_CONF_PATH, i, i);
    }
    const char *p = cfg_get("GPU_CORE_UTILIZATION_POLICY");
    c->policy = POLICY_DEFAULT;
    if (p && *p) {
        if (!strcasecmp(p, "force"))
            c->policy = POLICY_FORCE;
        else if (!strcasecmp(p, "disable"))
            c->policy = POLICY_DISABLE;
        else if (strcasecmp(p, "default"))
            LOG_ERR("GPU_CORE_UTILIZATION_POLICY=\"%s\" is not default|force|disable; using default", p);
    }
    c->priority = 1;
    const char *pr = cfg_get("CUDA_TASK_PRIORITY");
    if (pr && *pr) {
        uint32_t v;
        if (vgpu_parse_percent(pr, &v) == 0)
            c->priority = (int)v;
        else
            LOG_ERR("CUDA_TASK_PRIORITY=\"%s\" is not a non-negative integer; using 1", pr);
    }
    const char *co = knob_get("LIBVGPU_CONTEXT_OVERHEAD");
    if (co && *co) {
        if (vgpu_parse_size(co, &c->ctx_overhead) == 0 && c->ctx_overhead > 0)
            c->ctx_overhead_set = 1;
        else
            LOG_ERR("LIBVGPU_CONTEXT_OVERHEAD=\"%s\" is malformed or 0; measuring through NVML instead", co);
    }
    const char *cp = cfg_get("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    snprintf(c->cache_path, sizeof c->cache_path, "%s", (cp && *cp) ? cp : "/tmp/cudevshr.cache");
    if (fr < 0) c->cache_path[0] = 0; /* no region file at all: a private one, refusing everything */
    c->period_ms = 100;
    const char *pm = knob_get("LIBVGPU_LIMITER_PERIOD_MS");
    if (pm && *pm) {
        uint32_t v;
        if (vgpu_parse_percent(pm, &v) == 0 && v >= 10 && v <= 10000)
            c->period_ms = v;
        else
            LOG_ERR("LIBVGPU_LIMITER_PERIOD_MS=\"%s\" is not 10..10000; using 100", pm);
    }
    if (g_from_file) LOG_INFO("configuration from %s (%d entries); the environment's limits are ignored",
                              VGPU_CONF_PATH, g_nconf);
}
