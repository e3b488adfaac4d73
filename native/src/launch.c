/* Compute limiter. Container-wide token bucket per device in the shared region, counted in
 * launches. One process (the holder of the leader lock) measures the container's utilisation
 * through NVML every period, learns the GPU time one launch costs, and sets the refill rate to
 *   rate = L% * 1 s / cost * gain
 * where gain is a bounded integral correction applied only while the container is actually
 * throttled (no wind-up when the application asks for less than its share). Kernels of a quarter of
 * the control period or longer are settled by the GPU time NVML measured for them instead (see
 * control_step): charged what they ran, the debt carried over periods. A silent controller is
 * stood in for (its heartbeat in the region); a container where no process has NVML is paced by
 * launches the library times itself (blind_step). The launch path is one
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

/* ---------------------------------------------------------------- pacing without NVML
 * When the controller runs in a process without NVML (ctl_blind: no process of the container can
 * measure), the library times launches itself: at most one launch per process every SAMPLE_EVERY_NS
 * is run between two synchronisations of its stream (skipped while the stream is being captured
 * into a graph), and the time from the launch call's return to the second one's, less what a third
 * synchronisation of the now idle stream takes, is that kernel's time (see sample_end). The
 * process's cost per launch is the median of its recent timed launches (g_own); each of its launches
 * takes that cost in tokens, the median is summed in the card's sampled_ns/sampled_n (the
 * controller's unit cost), and the timed launch is settled at it. Only a limited launch that the
 * bucket let through is ever timed. */
#define SAMPLE_EVERY_NS 50000000ULL
static _Atomic uint64_t g_next_sample;
static _Thread_local double t_charged_ns; /* the GPU time this thread's last limited launch was charged */

/* This process's cost per launch without NVML: the median of its last SAMPLE_KEEP timed launches.
 * A timed launch is only ever late, never early: the process was preempted before its synchronise
 * returned, or its kernel queued behind another process's on the card (a 10 us kernel behind a
 * 300 ms one reads 300 ms). A median ignores such outliers while fewer than half the samples are
 * late, and follows a real change of kernel length within SAMPLE_KEEP / 2 + 1 timed launches. */
#define SAMPLE_KEEP 7
static struct {
    pthread_mutex_t mu;
    uint64_t ns[SAMPLE_KEEP];
    unsigned n;             /* timed launches so far */
    _Atomic uint64_t median; /* 0: none yet */
} g_own = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* adds a timed launch; returns the new median (the lower one of an even count) */
static uint64_t own_cost_add(uint64_t ns) {
    uint64_t v[SAMPLE_KEEP];
    pthread_mutex_lock(&g_own.mu);
    g_own.ns[g_own.n++ % SAMPLE_KEEP] = ns;
    unsigned k = g_own.n < SAMPLE_KEEP ? g_own.n : SAMPLE_KEEP;
    memcpy(v, g_own.ns, sizeof v);
    pthread_mutex_unlock(&g_own.mu);
    for (unsigned i = 1; i < k; i++) /* insertion sort of at most SAMPLE_KEEP */
        for (unsigned j = i; j > 0 && v[j - 1] > v[j]; j--) {
            uint64_t x = v[j];
            v[j] = v[j - 1];
            v[j - 1] = x;
        }
    atomic_store(&g_own.median, v[(k - 1) / 2]);
    return v[(k - 1) / 2];
}

/* this process's own timed cost per launch while paced without NVML; 0 otherwise (or none yet) */
static double blind_own(struct vgpu_region *R) {
    if (!atomic_load_explicit(&R->ctl_blind, memory_order_relaxed)) return 0;
    return (double)atomic_load_explicit(&g_own.median, memory_order_relaxed);
}

/* a launch costing `own` ns in tokens of the card's cost: at least one unit, and at most 1000
 * launches (with NVML) or, without, 10 s of refill (a process of 300 ms kernels beside one of 10 us
 * kernels: the unit is the short one's cost, see blind_step) */
static int64_t cost_units(struct vgpu_region *R, struct vgpu_dev *D, double own) {
    double unit_cost = (double)atomic_load_explicit(&D->cost_ns, memory_order_relaxed), units = VGPU_UNIT;
    if (unit_cost >= 1 && own >= 1) units = VGPU_UNIT * own / unit_cost;
    double cap = 1000.0 * VGPU_UNIT;
    double rate = (double)atomic_load_explicit(&D->rate, memory_order_relaxed);
    if (atomic_load_explicit(&R->ctl_blind, memory_order_relaxed) && rate >= 1) cap = 10.0 * rate;
    if (units > cap) units = cap;
    return units < 1 ? 1 : (int64_t)units;
}

/* the units a launch of this process takes alone: one token, or, paced without NVML once it has
 * timed launches, its own cost (a process of 300 ms kernels and one of 10 us kernels share one
 * bucket in GPU time) */
static int64_t solo_units(struct vgpu_region *R, struct vgpu_dev *D) {
    double own = blind_own(R);
    return own > 0 ? cost_units(R, D, own) : VGPU_UNIT;
}

static int sample_due(struct vgpu_region *R) {
    if (!atomic_load_explicit(&R->ctl_blind, memory_order_relaxed)) return 0;
    uint64_t now = vgpu_now_ns(), next = atomic_load_explicit(&g_next_sample, memory_order_relaxed);
    return now >= next && atomic_compare_exchange_strong(&g_next_sample, &next, now + SAMPLE_EVERY_NS);
}

/* the stream synchronised (its earlier work is done, so this launch's kernel starts at once): 1, or
 * 0: this launch is not timed */
static int sample_begin(CUstream s) {
    int capturing = 0;
    if (HELPER(cuStreamIsCapturing) && (HELPER(cuStreamIsCapturing)(s, &capturing) != CUDA_SUCCESS || capturing))
        return 0;
    return HELPER(cuStreamSynchronize) && HELPER(cuStreamSynchronize)(s) == CUDA_SUCCESS;
}

/* called as the launch returns: from then to the stream's synchronisation, less what synchronising
 * the idle stream takes, is the kernel's time (the launch call's own CPU time is not GPU time) */
static void sample_end(CUstream s, CUresult launched) {
    uint64_t t0 = vgpu_now_ns();
    struct vgpu_region *R = vgpu_R;
    if (launched != CUDA_SUCCESS || !R || HELPER(cuStreamSynchronize)(s) != CUDA_SUCCESS) return;
    uint64_t t1 = vgpu_now_ns();
    HELPER(cuStreamSynchronize)(s); /* on an idle stream: what a synchronisation itself costs */
    uint64_t idle = vgpu_now_ns() - t1, ns = t1 - t0 > idle ? t1 - t0 - idle : 1;
    int d = g_single_dev >= 0 ? g_single_dev : vgpu_current_device();
    if (d < 0 || d >= VGPU_MAX_DEV) return;
    struct vgpu_dev *D = &R->dev[d];
    uint64_t own = own_cost_add(ns);
    atomic_fetch_add(&D->sampled_ns, own);
    atomic_fetch_add(&D->sampled_n, 1);
    double cost = (double)atomic_load(&D->cost_ns), rate = (double)atomic_load(&D->rate);
    if (cost < 1 || rate < 1) return;
    /* charged its units at the cost known then; settled at this process's cost as now timed (a
     * longer kernel is charged in full once the median follows), the debt bounded by 10 s of refill */
    double debit = ((double)own - t_charged_ns) / cost * VGPU_UNIT;
    if (debit > rate * 10) debit = rate * 10;
    atomic_fetch_sub(&D->tokens, (int64_t)debit);
}

/* ---------------------------------------------------------------- fairness between processes
 * With two or more processes of the container waiting for a card's tokens in the last second (the
 * controller counts them: contenders), each process keeps an account of its share: credited L% / n
 * of wall time, debited its own estimated cost per launch (learnt from the GPU time the controller
 * measured for it, busy_ns in its slot, per launch) and trued up to that measurement each period.
 * Its launches take the shared bucket's tokens weighted by its own cost (a 1 ms launch is not
 * charged like a 300 ms one), and a launch of a process in credit goes on while the shared bucket is
 * in debt, down to FAIR_BORROW_S of refill; a process in debit waits for the bucket as before. So a
 * process of long kernels, whose debt is its own, no longer holds back one of short kernels, and
 * the total is still the shared bucket's: what a process in credit takes deepens the debt the
 * others wait out. One process (or none contending): one token a launch, exactly as before. */
#define FAIR_BANK_NS 50000000.0   /* an account saves at most 50 ms of its share */
#define FAIR_DEBT_NS 10000000000.0 /* and owes at most 10 s of it */
static struct {
    pthread_mutex_t mu;
    _Atomic int on;
    uint64_t last_ns, last_busy;
    double acct, cost, pending; /* ns: the balance; this process's cost per launch; charged, unmeasured */
    long launches;              /* since the last measurement */
} g_fair = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* brings the account to `now` (caller holds mu) */
static void fair_update(struct vgpu_region *R, struct vgpu_dev *D, int d, uint32_t n, uint64_t now) {
    uint64_t busy = atomic_load(&R->slot[vgpu_slot_index()].busy_ns);
    double share = vgpu_sm_limit(R, d) / 100.0 / n;
    if (!g_fair.last_ns || busy < g_fair.last_busy) { /* a fresh contention, or a reused slot */
        g_fair.last_ns = now;
        g_fair.last_busy = busy;
        g_fair.acct = g_fair.pending = 0;
        g_fair.launches = 0;
        if (g_fair.cost <= 0) g_fair.cost = (double)atomic_load(&D->cost_ns);
        return;
    }
    g_fair.acct += share * (double)(now - g_fair.last_ns);
    g_fair.last_ns = now;
    if (busy != g_fair.last_busy) { /* the controller measured another period of this process */
        double measured = (double)(busy - g_fair.last_busy);
        if (g_fair.launches > 0) g_fair.cost = 0.5 * g_fair.cost + 0.5 * measured / (double)g_fair.launches;
        g_fair.acct += g_fair.pending - measured;
        g_fair.pending = 0;
        g_fair.launches = 0;
        g_fair.last_busy = busy;
    }
    if (g_fair.acct > share * FAIR_BANK_NS) g_fair.acct = share * FAIR_BANK_NS;
    if (g_fair.acct < -share * FAIR_DEBT_NS) g_fair.acct = -share * FAIR_DEBT_NS;
}

/* the card's contenders, or 0 when fairness is off (fewer than two, or this process has no slot) */
static uint32_t fair_contenders(struct vgpu_dev *D) {
    uint32_t n = atomic_load_explicit(&D->contenders, memory_order_relaxed);
    if (n >= 2 && vgpu_slot_index() >= 0) return n;
    if (atomic_load_explicit(&g_fair.on, memory_order_relaxed)) { /* contention over: start afresh next time */
        pthread_mutex_lock(&g_fair.mu);
        g_fair.last_ns = 0;
        atomic_store(&g_fair.on, 0);
        pthread_mutex_unlock(&g_fair.mu);
    }
    return 0;
}

/* charges a launch to this process's account: the units it takes from the shared bucket, and
 * (credit) whether the account is still in credit */
static int64_t fair_charge(struct vgpu_region *R, struct vgpu_dev *D, int d, int *credit) {
    uint32_t n = fair_contenders(D);
    if (!n) return solo_units(R, D);
    pthread_mutex_lock(&g_fair.mu);
    atomic_store(&g_fair.on, 1);
    fair_update(R, D, d, n, vgpu_now_ns());
    double own = blind_own(R), cost = own > 0 ? own : g_fair.cost; /* without NVML: its timed cost */
    g_fair.acct -= cost;
    g_fair.pending += cost;
    g_fair.launches++;
    *credit = g_fair.acct >= 0;
    pthread_mutex_unlock(&g_fair.mu);
    return cost_units(R, D, cost);
}

/* whether this process's account is in credit now (it accrues while the process waits) */
static int fair_credit(struct vgpu_region *R, struct vgpu_dev *D, int d) {
    uint32_t n = fair_contenders(D);
    if (!n) return 0;
    pthread_mutex_lock(&g_fair.mu);
    fair_update(R, D, d, n, vgpu_now_ns());
    int credit = g_fair.acct >= 0;
    pthread_mutex_unlock(&g_fair.mu);
    return credit;
}

/* this process found the bucket in debt: it counts as a contender for the next second */
static void fair_want(struct vgpu_region *R) {
    int slot = vgpu_slot_index();
    if (slot >= 0) atomic_store_explicit(&R->slot[slot].want_ns, vgpu_now_ns(), memory_order_relaxed);
}

/* a process in credit may deepen the shared debt down to FAIR_BORROW_S of refill (a 300 ms kernel at a
 * 30 % share is one second of it: its own debt must not hold back the others) */
#define FAIR_BORROW_S 3
static int borrowable(struct vgpu_dev *D, int64_t t) {
    return t > -FAIR_BORROW_S * (int64_t)atomic_load_explicit(&D->rate, memory_order_relaxed);
}

int vgpu_launch_slow(void) {
    struct vgpu_region *R = vgpu_R;
    if (!R) return 0;
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
    if (!(gate & GATE_LIMIT)) return 0;
    int d = g_single_dev >= 0 ? g_single_dev : vgpu_current_device();
    if (!g_limited[d]) return 0;
    struct vgpu_dev *D = &R->dev[d];
    if (!atomic_load_explicit(&D->limiting, memory_order_relaxed)) return 0;
    int credit = 0;
    int64_t units = fair_charge(R, D, d, &credit);
    t_charged_ns = (double)units * (double)atomic_load_explicit(&D->cost_ns, memory_order_relaxed) / VGPU_UNIT;
    int64_t t = atomic_fetch_sub_explicit(&D->tokens, units, memory_order_relaxed) - units;
    if (t >= 0) return sample_due(R);
    /* empty bucket: this launch has taken its tokens on credit; it goes on if its process is in
     * credit of a fairly shared budget, else waits until the debt is repaid */
    fair_want(R);
    if (credit && borrowable(D, t)) return sample_due(R);
    atomic_store_explicit(&D->throttled, 1, memory_order_relaxed);
    uint64_t last = vgpu_now_ns();
    for (;;) {
        uint64_t now = vgpu_now_ns();
        if (now > last) atomic_fetch_add_explicit(&D->throttled_ns, now - last, memory_order_relaxed);
        last = now;
        refill(D, now);
        fair_want(R); /* still wanting, however long the wait */
        t = atomic_load(&D->tokens);
        if (!atomic_load(&D->limiting)) return 0;
        if (t >= 0 || (borrowable(D, t) && fair_credit(R, D, d))) return sample_due(R);
        uint64_t rate = atomic_load(&D->rate);
        uint64_t wait = rate ? (uint64_t)((__uint128_t)(uint64_t)(-t) * 1000000000ULL / rate) : 1000000;
        if (wait < 20000) wait = 20000;
        if (wait > 5000000) wait = 5000000;
        sleep_ns(wait);
    }
}

/* launch activity for the node monitor: a load of a read-mostly flag, a store once per watcher
 * tick; then the slow branch only while a limit or a monitor's hold is on. 1: time this launch. */
static inline int launch_gate(void) {
    if (unlikely(!atomic_load_explicit(&g_launched, memory_order_relaxed)))
        atomic_store_explicit(&g_launched, 1, memory_order_relaxed);
    if (unlikely(atomic_load_explicit(&vgpu_gate_any, memory_order_relaxed))) return vgpu_launch_slow();
    return 0;
}

/* the stream each launch path runs on (a _ptsz call's null stream is the per-thread one) */
#define PER_THREAD(s) ((s) ? (s) : (CUstream)(uintptr_t)2) /* CU_STREAM_PER_THREAD */
#define STREAM_cuLaunchKernel s
#define STREAM_cuLaunchKernel_ptsz PER_THREAD(s)
#define STREAM_cuLaunchKernelEx (config ? config->hStream : NULL)
#define STREAM_cuLaunchKernelEx_ptsz PER_THREAD(config ? config->hStream : NULL)
#define STREAM_cuLaunchCooperativeKernel s
#define STREAM_cuLaunchCooperativeKernel_ptsz PER_THREAD(s)
#define STREAM_cuLaunch NULL
#define STREAM_cuLaunchGrid NULL
#define STREAM_cuLaunchGridAsync s
#define STREAM_cuGraphLaunch s
#define STREAM_cuGraphLaunch_ptsz PER_THREAD(s)

/* every launch path of hooks.def (cuLaunchKernel, cuLaunchKernelEx, cuLaunchCooperativeKernel,
 * cuGraphLaunch and their _ptsz twins, the legacy API): the gate, then the driver (timed when the
 * gate says so) */
#define WRAP_launch_gate(name, base, params, args)                                               \
    CUresult name params {                                                                       \
        name##_fn real = REAL_PTR(name);                                                         \
        if (unlikely(!real)) return CUDA_ERROR_NOT_FOUND;                                        \
        if (likely(!launch_gate())) return real args;                                            \
        CUstream s_ = STREAM_##name;                                                             \
        int timed_ = sample_begin(s_);                                                           \
        CUresult r_ = real args;                                                                 \
        if (timed_) sample_end(s_, r_);                                                          \
        return r_;                                                                               \
    }
#include "hooks_gen.h"

/* ---------------------------------------------------------------- controller (leader only) */
#define BLIND_PERIODS 16
struct ctl {
    uint64_t last_ns, last_refilled;
    int64_t last_tokens;
    unsigned long long last_seen_us;
    nvmlDevice_t h;
    int have_cost;
    uint64_t last_sampled_n, last_sampled_ns; /* blind_step's view of the card's sampled launches */
    double recent[BLIND_PERIODS];             /* blind_step: the last periods' average timed cost */
    unsigned nrecent;
};
static struct ctl g_ctl[VGPU_MAX_DEV];

static uint64_t realtime_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

/* container utilisation in percent over (last_seen, now] from NVML per-process samples; each
 * process's share of the window's `dt` ns is added to its slot's busy_ns (fairness) */
static double measure(struct ctl *c, double dt) {
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
        int slot = vgpu_region_slot_of_pid(pids[k]);
        if (slot >= 0) {
            total += avg;
            matched = 1;
            atomic_fetch_add(&vgpu_R->slot[slot].busy_ns, (uint64_t)((avg > 100 ? 100 : avg) / 100.0 * dt));
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

/* whether the policy limits now. Default: while the node monitor says the card is contended; a
 * monitor gone silent (heartbeat over 2 s old) falls back to limiting. */
static int policy_on(struct vgpu_region *R, uint64_t now) {
    uint64_t seen = atomic_load(&R->monitor_ns);
    int stale = seen && (now > seen ? now - seen : seen - now) >= VGPU_MONITOR_STALE_NS;
    return vgpu_policy(R) == POLICY_FORCE ||
           (vgpu_policy(R) == POLICY_DEFAULT && (stale || atomic_load(&R->utilization_switch)));
}

/* first step of a controller (leader, stand-in, blind): the rate from the learnt cost, else from a
 * neutral 1 ms estimate */
static void ctl_start(struct vgpu_dev *D, struct ctl *c, uint32_t L, uint64_t now, int on) {
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
    c->last_sampled_n = atomic_load(&D->sampled_n);
    c->last_sampled_ns = atomic_load(&D->sampled_ns);
    atomic_store(&D->limiting, (uint32_t)on);
}

/* a debt is GPU time: re-express it in tokens of the new cost */
static void reexpress_debt(struct vgpu_dev *D, struct ctl *c, double old_cost, double cost) {
    if (cost == old_cost) return;
    int64_t t0 = atomic_load(&D->tokens), t1 = t0;
    while (t0 < 0 && !atomic_compare_exchange_weak(&D->tokens, &t0, t1 = (int64_t)(t0 * old_cost / cost))) {
    }
    if (t0 < 0) c->last_tokens += t1 - t0;
}

/* publishes a cost and rate (the burst: 50 ms of launches, at least two); returns the burst */
static int64_t set_rate(struct vgpu_dev *D, double cost, double rate) {
    atomic_store(&D->cost_ns, (uint64_t)cost);
    atomic_store(&D->rate, (uint64_t)rate);
    double burst = rate / 20;
    int64_t cap = (int64_t)(burst > 2 * VGPU_UNIT ? burst : 2 * VGPU_UNIT);
    atomic_store(&D->burst, (uint64_t)cap);
    return cap;
}

/* a lower rate must not leave a bucket full of tokens saved at the old, cheaper cost */
static void clamp_bucket(struct vgpu_dev *D, struct ctl *c, int64_t cap) {
    int64_t t = atomic_load(&D->tokens);
    while (t > cap && !atomic_compare_exchange_weak(&D->tokens, &t, cap)) {
    }
    if (t > cap) c->last_tokens = cap; /* the clamp is not consumption */
}

/* the processes that found this card's bucket in debt in the last second (fairness) */
static void count_contenders(struct vgpu_region *R, struct vgpu_dev *D, uint64_t now) {
    uint32_t n = 0, hwm = atomic_load(&R->slot_hwm);
    for (uint32_t i = 0; i < hwm && i < VGPU_MAX_SLOTS; i++) {
        uint64_t w = atomic_load_explicit(&R->slot[i].want_ns, memory_order_relaxed);
        if (atomic_load(&R->slot[i].state) == SLOT_LIVE && w && w <= now && now - w < 1000000000ULL) n++;
    }
    atomic_store(&D->contenders, n);
}

/* The controller of a process without NVML (no process of the container has it): the unit cost is
 * what the processes' timed launches measured (each process's median, see g_own), the refill the
 * share itself, and the contenders are counted (each process's fair account is debited its own timed
 * cost). No integral correction: nothing measures the container's utilisation. */
static void blind_step(struct vgpu_region *R, int d, uint64_t now) {
    struct vgpu_dev *D = &R->dev[d];
    struct ctl *c = &g_ctl[d];
    uint32_t L = vgpu_sm_limit(R, d);
    int on = policy_on(R, now);
    if (!c->last_ns) {
        ctl_start(D, c, L, now, on);
        return;
    }
    count_contenders(R, D, now); /* fairness: each process's account is debited its own timed cost */
    uint64_t n = atomic_load(&D->sampled_n), ns = atomic_load(&D->sampled_ns);
    double cost = (double)atomic_load(&D->cost_ns), old_cost = cost;
    if (n > c->last_sampled_n && ns >= c->last_sampled_ns) {
        /* the unit cost: the least of the last BLIND_PERIODS periods' average timed cost. Each
         * process's launches take their own cost in units of it (solo_units), so it only sets the
         * scale; the least keeps a process of short kernels at a fine grain beside one of long ones */
        double sample = (double)(ns - c->last_sampled_ns) / (double)(n - c->last_sampled_n);
        c->recent[c->nrecent++ % BLIND_PERIODS] = sample;
        unsigned k = c->nrecent < BLIND_PERIODS ? c->nrecent : BLIND_PERIODS;
        cost = c->recent[0];
        for (unsigned i = 1; i < k; i++)
            if (c->recent[i] < cost) cost = c->recent[i];
        if (cost < 10) cost = 10;
        if (cost > 1e9) cost = 1e9;
    }
    c->last_ns = now;
    c->last_sampled_n = n;
    c->last_sampled_ns = ns;
    reexpress_debt(D, c, old_cost, cost);
    double rate = (double)L / 100.0 * 1e9 / cost * VGPU_UNIT;
    clamp_bucket(D, c, set_rate(D, cost, rate < 1 ? 1 : rate));
    atomic_store(&D->limiting, (uint32_t)on);
    LOG_DEBUG("blind limiter dev=%d L=%u samples=%llu cost=%.0fns rate=%.1f/s", d, L, (unsigned long long)n, cost,
              rate / VGPU_UNIT);
}

static void control_step(struct vgpu_region *R, int d, uint64_t now) {
    struct vgpu_dev *D = &R->dev[d];
    struct ctl *c = &g_ctl[d];
    uint32_t L = vgpu_sm_limit(R, d);
    int on = policy_on(R, now);
    if (!c->h) c->h = vgpu_nvml_device(d);
    if (!c->h) on = 0;
    if (!c->last_ns) { /* first step as leader */
        ctl_start(D, c, L, now, on);
        return;
    }
    double dt = (double)(now - c->last_ns);
    double u = measure(c, dt);
    count_contenders(R, D, now);
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
     * the refill is the share itself; the gain (fitted to short kernels) is left as it is. So are
     * the launches of processes sharing the budget fairly (see fair_charge): weighted by each
     * process's own cost, they average kernels of any lengths into one cost. */
    int long_kernels = c->have_cost && (cost * 4 >= dt || atomic_load(&D->contenders) >= 2);
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
    reexpress_debt(D, c, old_cost, cost);
    double rate = (double)L / 100.0 * 1e9 / cost * (long_kernels ? 1.0 : gain) * VGPU_UNIT;
    if (rate < 1) rate = 1;
    atomic_store(&D->gain_ppm, (uint64_t)(gain * 1e6));
    int64_t cap = set_rate(D, cost, rate);
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
    clamp_bucket(D, c, cap);
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
#define CTL_STALE_BLIND_NS 1500000000ULL /* a process without NVML leaves it to one with NVML first */
#define CTL_CHECK_NS 100000000ULL /* how often a process that does not run the controller checks */

static uint64_t g_ctl_id;    /* this process's id in ctl_id (random, never 0) */

static uint64_t new_ctl_id(void) {
    uint64_t id = vgpu_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&id;
    id *= 0x9e3779b97f4a7c15ULL; /* spread: two processes started in the same ns differ by PID */
    return id ? id : 1;
}

/* how long the controller has been silent (never yet, or a garbage future stamp: for ever) */
static uint64_t ctl_silence(struct vgpu_region *R, uint64_t now, uint64_t *seen) {
    *seen = atomic_load(&R->ctl_ns);
    if (!*seen || *seen > now) return UINT64_MAX;
    return now - *seen;
}

/* Claims the controller when its heartbeat is stale, or (for a process with NVML) when the one
 * running it paces without NVML: 1 if this process now stands in. With no controller yet, anyone
 * limited claims at once: a leader with NVML that comes up takes over at its first pass. */
static int claim_controller(struct vgpu_region *R, uint64_t now, uint64_t stale_ns) {
    uint64_t seen;
    int better = g_can_lead && atomic_load(&R->ctl_blind);
    if (ctl_silence(R, now, &seen) < stale_ns && !better) return 0;
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
        } else if (gated && now - last_check >= CTL_CHECK_NS) {
            last_check = now;
            /* a process without NVML stands in only when none with NVML did in the meantime */
            standin = claim_controller(R, now, g_can_lead ? CTL_STALE_NS : CTL_STALE_BLIND_NS);
        }
        if (standin != was) {
            LOG_INFO("limiter controller %s", standin ? "silent: standing in" : "back: standing down");
            memset(g_ctl, 0, sizeof g_ctl); /* start (or later restart) from the learnt cost */
        }
        int limiting = (leader || standin) && gated;
        /* only a process that runs the controller beats: a leader without a limit of its own (its
         * cards are not limited) leaves the controller to a limited process standing in */
        if (limiting) heartbeat(R, now, !g_can_lead);
        owned = leader && gated;
        if (held(R, now)) atomic_fetch_or(&vgpu_gate_any, GATE_HOLD);
        if (limiting) {
            for (int d = 0; d < VGPU_MAX_DEV; d++)
                if (g_limited[d]) refill(&R->dev[d], now);
            if (now - last_ctl >= (uint64_t)vgpu_cfg.period_ms * 1000000ULL) {
                for (int d = 0; d < VGPU_MAX_DEV; d++)
                    if (g_limited[d]) (g_can_lead ? control_step : blind_step)(R, d, now);
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
             * it never takes the leader lock, and stands in only when no process with NVML runs the
             * controller (then pacing by the launches it times itself) */
            static int warned;
            if (!warned++)
                LOG_WARN("CUDA_DEVICE_SM_LIMIT is set but NVML is unavailable: this process cannot measure "
                         "utilisation; unless another process of the container leads, the compute limit is "
                         "paced by launch timing (approximate)");
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
    /* the parent's account is not the child's, and a thread of the parent may have held its lock */
    pthread_mutex_init(&g_fair.mu, NULL);
    g_fair.last_ns = 0;
    g_fair.cost = 0;
    atomic_store(&g_fair.on, 0);
    atomic_store(&g_next_sample, 0);
    pthread_mutex_init(&g_own.mu, NULL);
    g_own.n = 0;
    atomic_store(&g_own.median, 0);
}
