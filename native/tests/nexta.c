/* An interposer loaded after libvgpu: its RTLD_NEXT lookup must find libnextb, not itself. */
#define _GNU_SOURCE
#include <dlfcn.h>
const char *nexttest(void);
const char *nexttest(void) {
    const char *(*f)(void) = (const char *(*)(void))dlsym(RTLD_NEXT, "nexttest");
    if (!f) return "NULL";
    if (f == nexttest) return "SELF";
    return f();
}
