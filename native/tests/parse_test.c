/* Unit test of the strict size / percentage parsers (exit status = number of failures). */
#include <stdio.h>
#include <string.h>

#include "../src/vgpu.h"

int main(void) {
    static const struct {
        const char *in;
        int ok;
        unsigned long long v;
    } cases[] = {
        {"8192", 1, 8192},        {"0", 1, 0},
        {"8000m", 1, 8000ULL << 20}, {"8g", 1, 8ULL << 30},
        {"8G", 1, 8ULL << 30},     {"8Gi", 1, 8ULL << 30},
        {"8GiB", 1, 8ULL << 30},   {"512Mi", 1, 512ULL << 20},
        {"4k", 1, 4096},           {"4Ki", 1, 4096},
        {"1t", 1, 1ULL << 40},     {"100b", 1, 100},
        {"08g", 1, 8ULL << 30},    {" 16m ", 1, 16ULL << 20},
        {"1.5g", 0, 0},            {"-1", 0, 0},
        {"0x100", 0, 0},           {"", 0, 0},
        {"g", 0, 0},               {"8x", 0, 0},
        {"8gb extra", 0, 0},       {"99999999999999999999", 0, 0},
        {"17179869184g", 0, 0},    {"8 g", 0, 0},
        {"8iG", 0, 0},
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t v = 0;
        int ok = vgpu_parse_size(cases[i].in, &v) == 0;
        if (ok != cases[i].ok || (ok && v != cases[i].v)) {
            printf("FAIL size \"%s\": ok=%d v=%llu\n", cases[i].in, ok, (unsigned long long)v);
            fails++;
        }
    }
    static const struct {
        const char *in;
        int ok;
        unsigned v;
    } pcts[] = {{"50", 1, 50}, {"050", 1, 50}, {"100", 1, 100}, {"30%", 1, 30}, {"abc", 0, 0}, {"1.5", 0, 0}, {"-3", 0, 0}};
    for (size_t i = 0; i < sizeof pcts / sizeof *pcts; i++) {
        uint32_t v = 0;
        int ok = vgpu_parse_percent(pcts[i].in, &v) == 0;
        if (ok != pcts[i].ok || (ok && v != pcts[i].v)) {
            printf("FAIL percent \"%s\": ok=%d v=%u\n", pcts[i].in, ok, v);
            fails++;
        }
    }
    printf("parse_test: %d failures\n", fails);
    return fails;
}
