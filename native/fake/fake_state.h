/* State of the simulated GPU(s), shared by every process that names the same FAKECUDA_STATE file.
 * Kernel time is a shared timeline (a busy-until timestamp per device): a launch is queued after
 * whatever is already queued, whatever process queued it, so processes compete for one device and
 * utilisation does not depend on host CPU load. */
#ifndef HAMI_FAKE_STATE_H
#define HAMI_FAKE_STATE_H

#include <stdatomic.h>
#include <stdint.h>

#define FK_MAX_DEV 8
#define FK_MAX_PROC 32
#define FK_RING 4096
#define FK_MAGIC 0x4b4146454755504bULL

struct fk_iv {
    _Atomic uint64_t s, e;
    _Atomic uint32_t dev;
    uint32_t pad;
};
struct fk_proc {
    _Atomic int32_t pid;
    int32_t pad;
    _Atomic uint64_t mem[FK_MAX_DEV];
    _Atomic uint64_t busy_total[FK_MAX_DEV]; /* ns of kernel time ever queued */
    _Atomic uint64_t last_end;               /* end of this process's last queued kernel */
    _Atomic uint64_t head;
    struct fk_iv ring[FK_RING];
};
struct fk_dev {
    _Atomic uint64_t busy_until;
    _Atomic uint64_t used;
    uint64_t total;
    uint32_t sm_count;
    uint32_t pad;
};
struct fk_state {
    _Atomic uint64_t magic;
    uint32_t ndev;
    int32_t driver_version;
    struct fk_dev dev[FK_MAX_DEV];
    struct fk_proc proc[FK_MAX_PROC];
};

/* A simulated node's own cards (what a sandbox node's NVML reports to its node monitor):
 * FAKECUDA_CARDS names a file with one card a line, "<uuid>\t<memory MiB>\t<SM count>\t<name>".
 * When it is set and readable, it gives the device count, each device's memory and SM count (over
 * FAKECUDA_DEVICES / _TOTAL_MEM / _SM_COUNT) and NVML's UUIDs and names; a malformed line is
 * reported on stderr and ends the list. Unset: the defaults (UUID GPU-face0000-..-<index>). */
#define FK_TEXT 96
struct fk_card {
    char uuid[FK_TEXT];
    char name[FK_TEXT];
    uint64_t total;
    uint32_t sm_count;
};
/* the cards FAKECUDA_CARDS lists (parsed once per process); 0 when it is unset or lists none */
int fk_cards(const struct fk_card **out);

struct fk_state *fk_state(void);
struct fk_proc *fk_me(void);
int32_t fk_pid(void); /* the PID the driver lists this process under (host namespace) */
uint64_t fk_mono_ns(void);
uint64_t fk_real_us(void);
uint64_t fk_env_size(const char *name, uint64_t dflt);
void fk_reap(struct fk_state *S);
/* kernel time of `p` on `dev` overlapping [t0, t1) */
uint64_t fk_busy_between(struct fk_proc *p, int dev, uint64_t t0, uint64_t t1);
/* fault injection: returns the code to fail with, or 0 */
int fk_fault(const char *fn);

/* Deterministic noise, so that the limiter is tested against a device whose costs are not exact.
 * Off unless set; every draw is a hash of FAKECUDA_SEED (default 1) and a counter, so a run is
 * reproducible for a given seed and launch sequence.
 *   FAKECUDA_KERNEL_JITTER=<pct>   each kernel takes its nominal time x U(1-pct, 1+pct)
 *   FAKECUDA_CLOCK_DRIFT=<pct>     the device's speed changes every FAKECUDA_CLOCK_EPOCH_MS (250):
 *                                  kernels starting in an epoch take x U(1-pct, 1+pct) (boost clocks,
 *                                  thermal throttling, other work on the SMs)
 *   FAKECUDA_NVML_NOISE=<pct>      each per-process utilisation NVML reports is x U(1-pct, 1+pct)
 *                                  (NVML samples; it does not measure kernel time exactly) */
struct fk_noise {
    uint64_t seed, epoch_ns;
    double jitter, drift, nvml; /* fractions */
};
const struct fk_noise *fk_noise(void);
/* a uniform draw in [-1, 1) from (seed, stream, index) */
double fk_draw(uint64_t stream, uint64_t index);

#endif
