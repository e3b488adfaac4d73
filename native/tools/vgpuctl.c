/* vgpuctl: print a container's libvgpu shared region as JSON (read-only).
 *   vgpuctl [region-file]     (default: $CUDA_DEVICE_MEMORY_SHARED_CACHE or /tmp/cudevshr.cache)
 * For each slot it also reports whether its owner is alive, by testing the slot's kernel lock. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../src/vgpu.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    if (!path || !*path) path = "/tmp/cudevshr.cache";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    /* a copy, not a mapping: a region file truncated under a mapping would kill this reader with
     * SIGBUS (the liveness locks are still tested on the file itself) */
    static struct vgpu_region copy;
    const struct vgpu_region *R = &copy;
    size_t got = 0;
    while (got < sizeof copy) {
        ssize_t n = pread(fd, (char *)&copy + got, sizeof copy - got, (off_t)got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got < sizeof copy) {
        fprintf(stderr, "%s: %zu bytes, a region has %zu\n", path, got, sizeof copy);
        return 2;
    }
    if (R->magic != VGPU_REGION_MAGIC || R->abi_major != VGPU_REGION_ABI_MAJOR) {
        fprintf(stderr, "%s: not a libvgpu region of ABI %d\n", path, VGPU_REGION_ABI_MAJOR);
        return 2;
    }
    printf("{\"path\": \"%s\", \"abi\": \"%u.%u\", \"policy\": %d, \"priority\": %d, \"utilization_switch\": %d, "
           "\"recent_kernel\": %d, \"leader_pid\": %u, \"controller_ns\": %llu, \"controller_blind\": %u,\n "
           "\"devices\": [",
           path, R->abi_major, R->abi_minor, R->policy, R->priority, (int)R->utilization_switch,
           (int)R->recent_kernel, (unsigned)R->leader_pid, (unsigned long long)R->ctl_ns, (unsigned)R->ctl_blind);
    int first = 1, seen = 0;
    for (int d = 0; d < VGPU_MAX_DEV; d++) seen |= R->dev[d].uuid[0] != 0;
    for (int d = 0; d < VGPU_MAX_DEV; d++) {
        const struct vgpu_dev *D = &R->dev[d];
        /* devices a CUDA process has seen (it records their UUID); else every configured one */
        if (seen ? !D->uuid[0] : (!D->limit && !D->used && !D->sm_limit)) continue;
        printf("%s\n  {\"index\": %d, \"uuid\": \"%.48s\", \"limit\": %llu, \"used\": %llu, \"peak\": %llu, "
               "\"sm_limit\": %u, \"util\": %.2f, \"cost_ns\": %llu, \"rate_per_s\": %.1f, \"gain\": %.3f, "
               "\"throttled_ns\": %llu, \"contenders\": %u, \"sampled_n\": %llu}",
               first ? "" : ",", d, D->uuid, (unsigned long long)D->limit, (unsigned long long)D->used,
               (unsigned long long)D->peak, D->sm_limit, D->util_x100 / 100.0, (unsigned long long)D->cost_ns,
               (double)D->rate / VGPU_UNIT, D->gain_ppm / 1e6, (unsigned long long)D->throttled_ns,
               (unsigned)D->contenders, (unsigned long long)D->sampled_n);
        first = 0;
    }
    printf("],\n \"slots\": [");
    first = 1;
    for (uint32_t i = 0; i < R->slot_hwm && i < VGPU_MAX_SLOTS; i++) {
        const struct vgpu_slot *s = &R->slot[i];
        if (s->state != SLOT_LIVE) continue;
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)VGPU_LOCK_SLOT(i), .l_len = 1};
        int alive = fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
        printf("%s\n  {\"slot\": %u, \"pid\": %d, \"hostpid\": %d, \"alive\": %s, \"busy_ns\": %llu, \"used\": [",
               first ? "" : ",", i, s->pid, s->hostpid, alive ? "true" : "false", (unsigned long long)s->busy_ns);
        for (int d = 0; d < VGPU_MAX_DEV; d++) printf("%s%llu", d ? ", " : "", (unsigned long long)s->used[d]);
        printf("]}");
        first = 0;
    }
    printf("]}\n");
    return 0;
}
