/* Stand-ins for the three glibc 2.38 symbols the prebuilt uWebSockets.js addon references
 * (C23 variants of strtol, strtoul and sscanf, which differ from the classic ones only in also
 * accepting a "0b" binary prefix). Built and preloaded by setup.sh on glibc < 2.38 only. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

long __isoc23_strtol(const char *s, char **end, int base) { return strtol(s, end, base); }

unsigned long __isoc23_strtoul(const char *s, char **end, int base) {
    return strtoul(s, end, base);
}

int __isoc23_sscanf(const char *s, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = vsscanf(s, format, args);
    va_end(args);
    return n;
}
