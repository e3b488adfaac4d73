/* Emits the generated wrappers of hooks.def: for every row whose `wrap` column names a generator,
 *   WRAP_<wrap>(name, base, (params), (args))
 * A file that owns generators defines them, then includes this header once; every generator it does
 * not define expands to nothing there, so each wrapper is emitted by exactly one file. A row that
 * names a generator missing from the list below does not compile.
 *   proc_address                                 shim.c
 *   alloc_async, alloc_from_pool, mem_free,
 *   obj_destroy                                  alloc_account.c
 *   primary_release, primary_reset, ctx_create   context_account.c
 *   launch_gate                                  launch.c
 *   mem_info, total_mem                          mem_query.c
 * Generator bodies call the real function as CALL_REAL_ARGS(name, args). */
#define WRAP_own(name, base, params, args) /* written by hand */
#ifndef WRAP_proc_address
#define WRAP_proc_address(name, base, params, args)
#endif
#ifndef WRAP_alloc_async
#define WRAP_alloc_async(name, base, params, args)
#endif
#ifndef WRAP_alloc_from_pool
#define WRAP_alloc_from_pool(name, base, params, args)
#endif
#ifndef WRAP_mem_free
#define WRAP_mem_free(name, base, params, args)
#endif
#ifndef WRAP_obj_destroy
#define WRAP_obj_destroy(name, base, params, args)
#endif
#ifndef WRAP_primary_release
#define WRAP_primary_release(name, base, params, args)
#endif
#ifndef WRAP_primary_reset
#define WRAP_primary_reset(name, base, params, args)
#endif
#ifndef WRAP_ctx_create
#define WRAP_ctx_create(name, base, params, args)
#endif
#ifndef WRAP_mem_info
#define WRAP_mem_info(name, base, params, args)
#endif
#ifndef WRAP_total_mem
#define WRAP_total_mem(name, base, params, args)
#endif
#ifndef WRAP_launch_gate
#define WRAP_launch_gate(name, base, params, args)
#endif

#define CU_HOOK(name, base, ver, ptsz, wrap, params, args) WRAP_##wrap(name, base, params, args)
#include "hooks.def"
#undef CU_HOOK
