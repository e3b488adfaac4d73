/* /bin/bash of the sandbox's ubuntu stand-in image: runs busybox's sh with the same arguments, so
 * manifests written for ubuntu images (`bash -c "sleep 86400"`) run unchanged. Not a bash: only
 * what busybox sh understands works. */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    (void)argc;
    argv[0] = "sh"; /* busybox picks the applet by the name it is called with */
    execv("/usr/bin/busybox", argv);
    perror("/usr/bin/busybox");
    return 127;
}
