/* Logging and strict environment parsing. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
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

static void load_mem(const char *name, uint64_t *dst) {
    const char *s = getenv(name);
    if (!s || !*s) return;
    uint64_t v;
    if (vgpu_parse_size(s, &v) == 0) {
        *dst = v;
    } else {
        LOG_ERR("%s=\"%s\" is malformed (want e.g. 8192m, 8g, 8Gi or bytes); refusing every allocation on "
                "the affected device(s) rather than running unlimited",
                name, s);
        *dst = VGPU_LIMIT_DENY;
    }
}

static void load_sm(const char *name, uint32_t *dst) {
    const char *s = getenv(name);
    if (!s || !*s) return;
    uint32_t v;
    if (vgpu_parse_percent(s, &v) == 0) {
        *dst = v;
    } else {
        LOG_ERR("%s=\"%s\" is malformed (want a percentage 0..100); using the smallest share, 1%%", name, s);
        *dst = 1;
    }
}

void vgpu_config_load(struct vgpu_config *c) {
    memset(c, 0, sizeof *c);
    uint64_t all = 0;
    uint32_t sm_all = 0;
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
    const char *p = getenv("GPU_CORE_UTILIZATION_POLICY");
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
    const char *pr = getenv("CUDA_TASK_PRIORITY");
    if (pr && *pr) {
        uint32_t v;
        if (vgpu_parse_percent(pr, &v) == 0)
            c->priority = (int)v;
        else
            LOG_ERR("CUDA_TASK_PRIORITY=\"%s\" is not a non-negative integer; using 1", pr);
    }
    const char *co = getenv("LIBVGPU_CONTEXT_OVERHEAD");
    if (co && *co) {
        if (vgpu_parse_size(co, &c->ctx_overhead) == 0)
            c->ctx_overhead_set = 1;
        else
            LOG_ERR("LIBVGPU_CONTEXT_OVERHEAD=\"%s\" is malformed; measuring through NVML instead", co);
    }
    const char *cp = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    snprintf(c->cache_path, sizeof c->cache_path, "%s", (cp && *cp) ? cp : "/tmp/cudevshr.cache");
    c->period_ms = 100;
    const char *pm = getenv("LIBVGPU_LIMITER_PERIOD_MS");
    if (pm && *pm) {
        uint32_t v;
        if (vgpu_parse_percent(pm, &v) == 0 && v >= 10 && v <= 10000)
            c->period_ms = v;
        else
            LOG_ERR("LIBVGPU_LIMITER_PERIOD_MS=\"%s\" is not 10..10000; using 100", pm);
    }
}
