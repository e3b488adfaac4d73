/* Compute limiter. Container-wide token bucket per device in the shared region, counted in
 * launches. One process (the holder of the leader lock) measures the container's utilisation
 * through NVML every period, learns the GPU time one launch costs, and sets the refill rate to
 *   rate = L% * 1 s / cost * gain
 * where gain is a bounded integral correction applied only while the container is actually
 * throttled (no wind-up when the application asks for less than its share). Kernels of a quarter of
 * the control period or longer are settled by the GPU time NVML measured for them instead (see
 * control_step): charged what they ran, the debt carried over periods.
 * The launch path is one
 * relaxed load when no limit is configured, and one atomic fetch_sub on the shared bucket when it is;
 * only a launch that finds the bucket empty sleeps. A launch that waits (for tokens, or in a node
 * monitor's priority hold) adds the time it waits to its card's throttled_ns in the region after each
 * sleep; a launch that does not wait touches no counter. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

_Atomic int vgpu_gate_any;
static _Atomic int g_launched; /* process-local: a launch happened since the last tick */
static _Atomic int g_thread_started;
static int g_limited[VGPU_MAX_DEV];
static int g_single_dev = -1;
static int g_can_lead = 1; /* 0: a limit is set but this process has no NVML to measure with */

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void refill(struct vgpu_dev *D, uint64_t now) {
    uint64_t last = atomic_load_explicit(&D->last_refill_ns, memory_order_relaxed);
    uint64_t rate = atomic_load_explicit(&D->rate, memory_order_relaxed);
    if (now <= last || !rate) return;
    uint64_t dt = now - last;
    if (dt > 1000000000ULL) dt = 1000000000ULL; /* after a long idle the cap applies anyway */
    int64_t add = (int64_t)((__uint128_t)dt * rate / 1000000000ULL);
    if (add <= 0) return;
    uint64_t used_ns = (uint64_t)((__uint128_t)add * 1000000000ULL / rate);
    uint64_t next = (now - last > 1000000000ULL) ? now : last + used_ns;
    if (!atomic_compare_exchange_strong(&D->last_refill_ns, &last, next)) return; /* someone else did */
    int64_t cap = (int64_t)atomic_load_explicit(&D->burst, memory_order_relaxed);
    int64_t cur = atomic_load(&D->tokens), nv;
    do {
        nv = cur + add;
        if (nv > cap) nv = cap > cur ? cap : cur;
    } while (!atomic_compare_exchange_weak(&D->tokens, &cur, nv));
    atomic_fetch_add(&D->refilled, (uint64_t)(nv - cur));
}

/* a node monitor holds this container's launches (recent_kernel < 0) and is still alive */
static int held(struct vgpu_region *R, uint64_t now) {
    if (atomic_load_explicit(&R->recent_kernel, memory_order_relaxed) >= 0) return 0;
    uint64_t seen = atomic_load_explicit(&R->monitor_ns, memory_order_relaxed);
    uint64_t age = now > seen ? now - seen : seen - now; /* a garbage future stamp is stale too */
    return seen && age < VGPU_MONITOR_STALE_NS;
}

/* a held launch waited `ns` more: counted on the card it was made on (the region's throttled_ns) */
static void waited(struct vgpu_region *R, uint64_t ns) {
    int d = g_single_dev >= 0 ? g_single_dev : vgpu_current_device();
    if (d >= 0 && d < VGPU_MAX_DEV) atomic_fetch_add_explicit(&R->dev[d].throttled_ns, ns, memory_order_relaxed);
}

void vgpu_launch_slow(void) {
    struct vgpu_region *R = vgpu_R;
    if (!R) return;
    int gate = atomic_load_explicit(&vgpu_gate_any, memory_order_relaxed);
    if (gate & GATE_HOLD) {
        /* a higher-priority container is busy on one of our cards: wait while the monitor says so */
        uint64_t last = vgpu_now_ns();
        while (held(R, last)) {
            sleep_ns(10000000);
            uint64_t now = vgpu_now_ns();
            waited(R, now - last); /* counted as it goes: a long hold shows while it lasts */
            last = now;
        }
        atomic_fetch_and(&vgpu_gate_any, ~GATE_HOLD);
    }
    if (!(gate & GATE_LIMIT)) return;
    int d = g_single_dev >= 0 ? g_single_dev : vgpu_current_device();
    if (!g_limited[d]) return;
    struct vgpu_dev *D = &R->dev[d];
    if (!atomic_load_explicit(&D->limiting, memory_order_relaxed)) return;
    if (atomic_fetch_sub_explicit(&D->tokens, VGPU_UNIT, memory_order_relaxed) - VGPU_UNIT >= 0) return;
    /* empty bucket: this launch has taken its token on credit; wait until the debt is repaid */
    atomic_store_explicit(&D->throttled, 1, memory_order_relaxed);
    uint64_t last = vgpu_now_ns();
    for (;;) {
        uint64_t now = vgpu_now_ns();
        if (now > last) atomic_fetch_add_explicit(&D->throttled_ns, now - last, memory_order_relaxed);
        last = now;
        refill(D, now);
        int64_t t = atomic_load(&D->tokens);
        if (t >= 0 || !atomic_load(&D->limiting)) return;
        uint64_t rate = atomic_load(&D->rate);
        uint64_t wait = rate ? (uint64_t)((__uint128_t)(uint64_t)(-t) * 1000000000ULL / rate) : 1000000;
        if (wait < 20000) wait = 20000;
        if (wait > 5000000) wait = 5000000;
        sleep_ns(wait);
    }
}

/* launch activity for the node monitor: a load of a read-mostly flag, a store once per watcher
 * tick; then the slow branch only while a limit or a monitor's hold is on */
#define LAUNCH_GATE()                                                                            \
    do {                                                                                         \
        if (unlikely(!atomic_load_explicit(&g_launched, memory_order_relaxed)))                  \
            atomic_store_explicit(&g_launched, 1, memory_order_relaxed);                         \
        if (unlikely(atomic_load_explicit(&vgpu_gate_any, memory_order_relaxed))) vgpu_launch_slow(); \
    } while (0)

/* every launch path of hooks.def (cuLaunchKernel, cuLaunchKernelEx, cuLaunchCooperativeKernel,
 * cuGraphLaunch and their _ptsz twins): the gate, then the driver */
#define WRAP_launch_gate(name, base, params, args)                                               \
    CUresult name params {                                                                       \
        name##_fn real = REAL_PTR(name);                                                         \
        if (unlikely(!real)) return CUDA_ERROR_NOT_FOUND;                                        \
        LAUNCH_GATE();                                                                           \
        return real args;                                                                        \
    }
#include "hooks_gen.h"

/* ---------------------------------------------------------------- controller (leader only) */
struct ctl {
    uint64_t last_ns, last_refilled;
    int64_t last_tokens;
    unsigned long long last_seen_us;
    nvmlDevice_t h;
    int have_cost;
};
static struct ctl g_ctl[VGPU_MAX_DEV];

static uint64_t realtime_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

/* container utilisation in percent over (last_seen, now] from NVML per-process samples */
static double measure(struct ctl *c) {
    nvmlProcessUtilizationSample_t s[256];
    unsigned n = 256;
    unsigned long long seen = c->last_seen_us;
    c->last_seen_us = realtime_us();
    nvmlReturn_t r = NVML_HELPER_FN(nvmlDeviceGetProcessUtilization)(c->h, s, &n, seen);
    if (r != NVML_SUCCESS || n == 0) return 0.0;
    if (n > 256) n = 256;
    double total = 0, other = 0;
    unsigned pids[256], cnt[256], np = 0;
    double sum[256];
    for (unsigned i = 0; i < n; i++) {
        unsigned k = 0;
        while (k < np && pids[k] != s[i].pid) k++;
        if (k == np) {
            pids[np] = s[i].pid;
            cnt[np] = 0;
            sum[np++] = 0;
        }
        cnt[k]++;
        sum[k] += s[i].smUtil;
    }
    int matched = 0;
    for (unsigned k = 0; k < np; k++) {
        double avg = sum[k] / cnt[k];
        if (vgpu_region_owns_pid(pids[k])) {
            total += avg;
            matched = 1;
        } else {
            other += avg;
        }
    }
    if (!matched && other > 0) {
        static int warned;
        if (!warned++)
            LOG_WARN("NVML reports no process of this container (host PIDs unknown?); pacing on the whole "
                     "device's utilisation");
        total = other;
    }
    return total > 100 ? 100 : total;
}

static void control_step(struct vgpu_region *R, int d, uint64_t now) {
    struct vgpu_dev *D = &R->dev[d];
    struct ctl *c = &g_ctl[d];
    uint32_t L = vgpu_sm_limit(R, d);
    /* default policy: limit while the node monitor says the card is contended; a monitor gone
     * silent (heartbeat over 2 s old) falls back to limiting */
    uint64_t seen = atomic_load(&R->monitor_ns);
    int stale = seen && (now > seen ? now - seen : seen - now) >= VGPU_MONITOR_STALE_NS;
    int on = vgpu_policy(R) == POLICY_FORCE ||
             (vgpu_policy(R) == POLICY_DEFAULT && (stale || atomic_load(&R->utilization_switch)));
    if (!c->h) c->h = vgpu_nvml_device(d);
    if (!c->h) on = 0;
    if (!c->last_ns) { /* first step as leader: start from a neutral estimate */
        uint64_t cost = atomic_load(&D->cost_ns);
        if (!cost) atomic_store(&D->cost_ns, cost = 1000000);
        uint64_t g = atomic_load(&D->gain_ppm);
        if (!g) atomic_store(&D->gain_ppm, 1000000);
        uint64_t rate = (uint64_t)((double)L / 100.0 * 1e9 / (double)cost * VGPU_UNIT);
        atomic_store(&D->rate, rate ? rate : 1);
        atomic_store(&D->burst, (uint64_t)(rate / 20 > 2 * VGPU_UNIT ? rate / 20 : 2 * VGPU_UNIT));
        atomic_store(&D->last_refill_ns, now);
        c->last_ns = now;
        c->last_refilled = atomic_load(&D->refilled);
        c->last_tokens = atomic_load(&D->tokens);
        c->last_seen_us = realtime_us();
        atomic_store(&D->limiting, (uint32_t)on);
        return;
    }
    double dt = (double)(now - c->last_ns);
    double u = measure(c);
    uint64_t refilled = atomic_load(&D->refilled);
    int64_t tokens = atomic_load(&D->tokens);
    double launches = ((double)(refilled - c->last_refilled) - (double)(tokens - c->last_tokens)) / VGPU_UNIT;
    c->last_ns = now;
    c->last_refilled = refilled;
    c->last_tokens = tokens;
    int throttled = atomic_exchange(&D->throttled, 0);
    double cost = (double)atomic_load(&D->cost_ns), old_cost = cost;
    double charged_ns = launches * cost; /* what the bucket took for this period's launches */
    double gain = atomic_load(&D->gain_ppm) / 1e6;
    int settled = 0;
    if (launches >= 1.0) {
        double sample = u / 100.0 * dt / launches;
        if (u < 0.5) sample = cost / 8; /* launches that cost no measurable GPU time */
        if (!c->have_cost && u >= 0.5) {
            cost = sample; /* first real measurement replaces the neutral guess outright */
            c->have_cost = 1;
        } else {
            settled = c->have_cost && sample < cost * 1.25 && sample > cost * 0.8;
            /* kernels got costlier: believe it at once (overshoot hurts other tenants); cheaper:
             * move halfway (a short idle-looking window must not open the gates) */
            cost = sample > cost * 1.25 ? sample : 0.5 * cost + 0.5 * sample;
        }
        if (cost < 10) cost = 10;
        if (cost > 1e9) cost = 1e9;
    }
    /* Kernels of a quarter of the control period or longer: the per-period cost estimate cannot see
     * a whole kernel (it is capped by the period), so launches are settled by measured time below and
     * the refill is the share itself; the gain (fitted to short kernels) is left as it is. */
    int long_kernels = c->have_cost && cost * 4 >= dt;
    /* integral correction: always pulls down when over the limit; pushes up only while the
     * container is actually being throttled (no wind-up while the application asks for less) */
    if (settled && u > 0.5 && !long_kernels) {
        double err = ((double)L - u) / (double)L;
        if (err > 0.5) err = 0.5;
        if (err < -0.5) err = -0.5;
        if (err < 0 || throttled) gain *= 1.0 + 0.25 * err;
        if (gain < 0.3) gain = 0.3;
        if (gain > 3.0) gain = 3.0;
    }
    /* a debt is GPU time: re-express it in tokens of the new cost */
    if (cost != old_cost) {
        int64_t t0 = atomic_load(&D->tokens), t1 = t0;
        while (t0 < 0 && !atomic_compare_exchange_weak(&D->tokens, &t0, t1 = (int64_t)(t0 * old_cost / cost))) {
        }
        if (t0 < 0) c->last_tokens += t1 - t0;
    }
    double rate = (double)L / 100.0 * 1e9 / cost * (long_kernels ? 1.0 : gain) * VGPU_UNIT;
    if (rate < 1) rate = 1;
    atomic_store(&D->cost_ns, (uint64_t)cost);
    atomic_store(&D->gain_ppm, (uint64_t)(gain * 1e6));
    atomic_store(&D->rate, (uint64_t)rate);
    double burst = rate / 20; /* 50 ms of launches, at least two */
    int64_t cap = (int64_t)(burst > 2 * VGPU_UNIT ? burst : 2 * VGPU_UNIT);
    atomic_store(&D->burst, (uint64_t)cap);
    /* Charge by measured GPU time: a launch takes one token (its estimated cost) when it is made;
     * here the period's measured busy time settles the difference, in tokens at the new cost. A
     * kernel longer than the period (its cost estimate, a per-period figure, is then too low) is so
     * charged in full while it runs, and the debt carries over periods: the next launch waits until
     * it is repaid, however long the kernel was. Negative differences (launched work not yet run)
     * are credited, so the charge over time is the measured time. The debt is bounded by 10 s of
     * refill (a garbage measurement cannot stall the container for longer). */
    if (on && long_kernels) {
        double busy_ns = u / 100.0 * dt;
        int64_t debit = (int64_t)((busy_ns - charged_ns) / cost * VGPU_UNIT);
        int64_t floor = -(int64_t)(rate * 10);
        int64_t cur = atomic_load(&D->tokens);
        if (cur - debit < floor) debit = cur > floor ? cur - floor : 0;
        if (debit) {
            atomic_fetch_sub(&D->tokens, debit);
            c->last_tokens -= debit; /* a settlement, not consumption */
        }
    }
    /* a lower rate must not leave a bucket full of tokens saved at the old, cheaper cost */
    int64_t t = atomic_load(&D->tokens);
    while (t > cap && !atomic_compare_exchange_weak(&D->tokens, &t, cap)) {
    }
    if (t > cap) c->last_tokens = cap; /* the clamp is not consumption */
    atomic_store(&D->util_x100, (uint64_t)(u * 100));
    atomic_store(&D->limiting, (uint32_t)on);
    LOG_DEBUG("limiter dev=%d L=%u u=%.1f launches=%.0f cost=%.0fns gain=%.3f rate=%.1f/s", d, L, u, launches,
              cost, gain, rate / VGPU_UNIT);
}

/* ---------------------------------------------------------------- who runs the controller
 * The holder of the leader lock runs it and writes the region's heartbeat (ctl_ns, ctl_id) on every
 * pass of its watcher (5 ms while limiting, 50 ms otherwise). A leader that stops passing — SIGSTOP,
 * a debugger, a hung NVML call, in whatever PID namespace — keeps its lock, so liveness is judged by
 * the heartbeat alone (CLOCK_MONOTONIC is system-wide): once it is CTL_STALE_NS old, the first
 * limited process with NVML to claim it by CAS stands in, and writes the heartbeat itself; the
 * others see a fresh heartbeat again. A stand-in steps down as soon as ctl_id names another process
 * (the leader resumed, or another process stood in for a stand-in that went silent). Until then the
 * bucket keeps refilling at the last rate from every waiting launch: a silent controller never
 * means "no limit". */
#define CTL_STALE_NS 500000000ULL
#define CTL_CHECK_NS 100000000ULL /* how often a process that does not run the controller checks */

static uint64_t g_ctl_id;    /* this process's id in ctl_id (random, never 0) */
static uint64_t g_watch_ns;  /* when this process's watcher started */

static uint64_t new_ctl_id(void) {
    uint64_t id = vgpu_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&id;
    id *= 0x9e3779b97f4a7c15ULL; /* spread: two processes started in the same ns differ by PID */
    return id ? id : 1;
}

/* how long the controller has been silent (a garbage future stamp counts as silent) */
static uint64_t ctl_silence(struct vgpu_region *R, uint64_t now, uint64_t *seen) {
    *seen = atomic_load(&R->ctl_ns);
    if (!*seen) return now - g_watch_ns; /* none yet: as long as this process has been waiting */
    return now > *seen ? now - *seen : *seen - now;
}

/* claims the controller when its heartbeat is stale: 1 if this process now stands in */
static int claim_controller(struct vgpu_region *R, uint64_t now, uint64_t stale_ns) {
    uint64_t seen;
    if (ctl_silence(R, now, &seen) < stale_ns) return 0;
    if (!atomic_compare_exchange_strong(&R->ctl_ns, &seen, now)) return 0; /* another process did */
    atomic_store(&R->ctl_id, g_ctl_id);
    return 1;
}

static void heartbeat(struct vgpu_region *R, uint64_t now, int blind) {
    atomic_store_explicit(&R->ctl_id, g_ctl_id, memory_order_relaxed);
    atomic_store_explicit(&R->ctl_blind, (uint32_t)blind, memory_order_relaxed);
    atomic_store_explicit(&R->ctl_ns, now, memory_order_release);
}

/* One thread per process. The process holding the container's leader lock runs the controller and
 * the periodic reaper (so a container of N processes makes one scan, not N); the others retry the
 * leader lock (one fcntl per pass, so a dead leader is replaced promptly), watch the controller's
 * heartbeat and report launch activity for the node monitor. */
static void *watcher(void *arg) {
    (void)arg;
    uint64_t last_ctl = 0, last_reap = 0, last_check = 0;
    int standin = 0, owned = 0;
    g_watch_ns = vgpu_now_ns();
    for (;;) {
        struct vgpu_region *R = vgpu_R;
        if (!R) break; /* forked child without re-attach: the child starts its own thread */
        uint64_t now = vgpu_now_ns();
        /* a process that cannot measure never takes the lead: it would leave the container unpaced */
        int leader = g_can_lead && vgpu_is_leader_try();
        int gated = (atomic_load(&vgpu_gate_any) & GATE_LIMIT) != 0;
        int was = standin;
        if (leader) {
            /* someone stood in while this leader was silent: restart from the learnt cost */
            if (owned && atomic_load(&R->ctl_id) != g_ctl_id) owned = 0;
            if (!owned) memset(g_ctl, 0, sizeof g_ctl);
            standin = 0;
        } else if (standin) { /* the leader resumed, or another process took over */
            standin = gated && atomic_load(&R->ctl_id) == g_ctl_id;
        } else if (gated && g_can_lead && now - last_check >= CTL_CHECK_NS) {
            last_check = now;
            standin = claim_controller(R, now, CTL_STALE_NS);
        }
        if (standin != was) {
            LOG_INFO("limiter controller %s", standin ? "silent: standing in" : "back: standing down");
            memset(g_ctl, 0, sizeof g_ctl); /* start (or later restart) from the learnt cost */
        }
        if (leader || standin) heartbeat(R, now, 0);
        owned = leader;
        int limiting = (leader || standin) && gated;
        if (held(R, now)) atomic_fetch_or(&vgpu_gate_any, GATE_HOLD);
        if (limiting) {
            for (int d = 0; d < VGPU_MAX_DEV; d++)
                if (g_limited[d]) refill(&R->dev[d], now);
            if (now - last_ctl >= (uint64_t)vgpu_cfg.period_ms * 1000000ULL) {
                for (int d = 0; d < VGPU_MAX_DEV; d++)
                    if (g_limited[d]) control_step(R, d, now);
                last_ctl = now;
            }
        }
        if (now - last_reap >= 100000000ULL) {
            if (leader) vgpu_reap_dead(1);
            vgpu_pools_resample(); /* pools shrink at synchronisation: follow them */
            if (atomic_exchange(&g_launched, 0)) {
                int32_t rk = atomic_load(&R->recent_kernel);
                /* never overwrite a hold the monitor sets meanwhile */
                if (rk >= 0) atomic_compare_exchange_strong(&R->recent_kernel, &rk, 2);
                atomic_store(&R->last_kernel_ns, now);
            }
            last_reap = now;
        }
        sleep_ns(limiting ? 5000000ULL : 50000000ULL);
    }
    return NULL;
}

void vgpu_limiter_start(void) {
    struct vgpu_region *R = vgpu_region();
    int any = 0, nlim = 0, last = -1;
    int ndev = vgpu_ndev > 0 ? vgpu_ndev : 1;
    memset(g_limited, 0, sizeof g_limited);
    for (int o = 0; o < ndev; o++) { /* this process's devices, as the container's cards */
        int d = vgpu_dev_index(o);
        if (d < 0 || g_limited[d]) continue;
        uint32_t L = vgpu_sm_limit(R, d);
        g_limited[d] = L > 0 && L < 100 && vgpu_policy(R) != POLICY_DISABLE;
        if (g_limited[d]) {
            any = 1;
            nlim++;
            last = d;
        }
    }
    g_single_dev = (nlim == 1 && vgpu_ndev <= 1) ? last : -1;
    g_can_lead = 1;
    if (any) {
        vgpu_nvml_load();
        if (!vgpu_nvml_ok || !NVML_HELPER_FN(nvmlDeviceGetProcessUtilization)) {
            /* its launches still take the container's tokens, paced by a process that can measure;
             * it never leads (a leader without NVML left everyone unlimited) */
            static int warned;
            if (!warned++)
                LOG_WARN("CUDA_DEVICE_SM_LIMIT is set but NVML is unavailable: this process cannot measure; "
                         "unless another process of the container leads, the compute limiter stands down "
                         "(memory limits still apply)");
            g_can_lead = 0;
        }
    }
    if (vgpu_policy(R) == POLICY_DISABLE) LOG_INFO("GPU_CORE_UTILIZATION_POLICY=disable: compute limiter off");
    if (any) atomic_fetch_or(&vgpu_gate_any, GATE_LIMIT);
    else atomic_fetch_and(&vgpu_gate_any, ~GATE_LIMIT);
    if (atomic_exchange(&g_thread_started, 1)) return;
    g_ctl_id = new_ctl_id();
    sigset_t all, old;
    sigfillset(&all);
    /* the watcher never takes the application's signals, except the synchronous ones its own faults
     * raise (blocked, they kill the process before a handler runs: the region's SIGBUS guard) */
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGSEGV);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 256 * 1024);
    pthread_t t;
    int r = pthread_create(&t, &a, watcher, NULL);
    pthread_attr_destroy(&a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r) {
        LOG_ERR("cannot start the watcher thread: %s; the compute limiter stands down", strerror(r));
        atomic_fetch_and(&vgpu_gate_any, ~GATE_LIMIT);
    }
}

void vgpu_limiter_atfork_child(void) {
    atomic_store(&g_thread_started, 0);
    atomic_store(&vgpu_gate_any, 0); /* re-enabled when the child initialises CUDA */
    memset(g_ctl, 0, sizeof g_ctl);
}
