/* What alloc_account.c offers context_account.c: the map of tracked objects (arrays, mipmapped
 * arrays, contexts), keyed by their driver handle. */
#ifndef HAMI_ACCOUNT_H
#define HAMI_ACCOUNT_H

#include "ptrmap.h"

/* struct ment.kind */
enum { K_LINEAR = 1, K_ASYNC, K_MANAGED, K_PITCH, K_VMM, K_ARRAY, K_MIPMAP, K_CTX, K_POOLED };

/* remembers that object `key` holds `size` charged bytes on `dev` */
VGPU_HIDDEN void vgpu_obj_track(uint64_t key, uint64_t size, int dev, int kind);
/* Releasing an object: untrack it before the driver call (so a handle value the driver reuses right
 * after the release can never be confused with this one), then hand the driver's answer to
 * vgpu_obj_released, which uncharges on success and tracks the object again on failure. */
VGPU_HIDDEN int vgpu_obj_untrack(uint64_t key, struct ment *out);
VGPU_HIDDEN CUresult vgpu_obj_released(const struct ment *e, int had, CUresult r);

#endif
