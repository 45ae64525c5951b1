/* GGUF string arrays: see llamapy.h. */
#include <string.h>

#include "llamapy.h"

static uint64_t load_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

int64_t lp_gguf_strings(const uint8_t *buf, uint64_t size, uint64_t pos, uint64_t n, uint8_t *out, uint64_t cap,
                        uint64_t *total) {
    uint64_t bytes = 0, used = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (pos > size || size - pos < 8) return -1;
        const uint64_t len = load_u64le(buf + pos);
        pos += 8;
        if (len > size - pos) return -1;
        if (out) {
            if (len >= cap - used) return -1;
            if (len && memchr(buf + pos, 0, len)) return -2;
            memcpy(out + used, buf + pos, len);
            out[used + len] = 0;
            used += len + 1;
        }
        pos += len;
        bytes += len;
    }
    *total = bytes;
    return (int64_t)pos;
}
