/* GGUF metadata helpers: a vocabulary is 10^5 length-prefixed strings, too many for a Python loop
 * at every start. */
#ifndef LP_GGUF_H
#define LP_GGUF_H

#include <stdint.h>

/* LP_API_BEGIN */
/* Walk n GGUF strings (a little-endian u64 length, then the bytes) starting at buf[pos], within size bytes.
 * out NULL: returns the offset just past them and sets *total to their bytes, or -1 if a length runs
 * past size. With out (cap bytes, *total + n needed): also copies each string followed by a 0 byte; returns
 * -1 if they don't fit, -2 if a string holds a 0 byte itself (the caller then splits them its own way). */
int64_t lp_gguf_strings(const uint8_t *buf, uint64_t size, uint64_t pos, uint64_t n, uint8_t *out, uint64_t cap,
                        uint64_t *total);
/* LP_API_END */

#endif
