"""The iteration order of the reference's `std::unordered_map<std::string, llama_token>` (GCC libstdc++).

The reference picks EOT / FIM tokens by walking its token-to-id map and taking the first text that
matches; when a vocabulary has several matching texts, the map's order decides. On Linux the
reference is built against libstdc++, whose order follows from its string hash (_Hash_bytes), its
prime bucket counts and the way it links nodes. This module replays that for a list of keys inserted
in order; tests/test_tokenizer.py checks it against the order a compiled C++ program prints, when a
C++ compiler is at hand.
"""
from __future__ import annotations

import bisect

_M64 = (1 << 64) - 1
_MUL = 0xC6A4A7935BD1E995
_SEED = 0xC70F6907
_FAST_BKT = (2, 2, 2, 3, 5, 5, 7, 7, 11, 11, 11, 11, 13, 13)


def string_hash(b: bytes) -> int:
    """std::hash<std::string> of libstdc++ on 64-bit targets (_Hash_bytes)."""
    n = len(b)
    h = (_SEED ^ (n * _MUL)) & _M64
    end = n & ~7
    for i in range(0, end, 8):
        d = (int.from_bytes(b[i : i + 8], "little") * _MUL) & _M64
        d = ((d ^ (d >> 47)) * _MUL) & _M64
        h = ((h ^ d) * _MUL) & _M64
    if n & 7:
        h = ((h ^ int.from_bytes(b[end:], "little")) * _MUL) & _M64
    h = ((h ^ (h >> 47)) * _MUL) & _M64
    return h ^ (h >> 47)


def _next_bucket_count(n: int) -> int:
    if n < len(_FAST_BKT):
        return 1 if n == 0 else _FAST_BKT[n]
    return _PRIMES[bisect.bisect_left(_PRIMES, n, 6)]


def _primes() -> list[int]:
    # libstdc++'s bucket counts: a fixed prime table, ~1.08x apart (values from its __prime_list)
    return [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 103, 109,
        113, 127, 137, 139, 149, 157, 167, 179, 193, 199, 211, 227, 241, 257, 277, 293, 313, 337, 359, 383, 409,
        439, 467, 503, 541, 577, 619, 661, 709, 761, 823, 887, 953, 1031, 1109, 1193, 1289, 1381, 1493, 1613,
        1741, 1879, 2029, 2179, 2357, 2549, 2753, 2971, 3209, 3469, 3739, 4027, 4349, 4703, 5087, 5503, 5953,
        6427, 6949, 7517, 8123, 8783, 9497, 10273, 11113, 12011, 12983, 14033, 15173, 16411, 17749, 19183,
        20753, 22447, 24281, 26267, 28411, 30727, 33223, 35933, 38873, 42043, 45481, 49201, 53201, 57557,
        62233, 67307, 72817, 78779, 85229, 92203, 99733, 107897, 116731, 126271, 136607, 147793, 159871,
        172933, 187091, 202409, 218971, 236897, 256279, 277261, 299951, 324503, 351061, 379787, 410857,
        444487, 480881, 520241, 562841, 608903, 658753, 712697, 771049, 834181, 902483, 976369, 1056323,
        1142821, 1236397, 1337629, 1447153, 1565659, 1693859, 1832561, 1982627, 2144977, 2320627, 2510653,
        2716249, 2938679, 3179303, 3439651, 3721303, 4026031, 4355707, 4712381, 5098259, 5515729, 5967347,
    ]


_PRIMES = _primes()


def unordered_map_order(keys: list[bytes]) -> list[int]:
    """Values of `m[keys[i]] = i` (i in order) in std::unordered_map iteration order (libstdc++):
    one singly linked list; a node goes first in its bucket, or first in the list when its bucket
    was empty; a rehash (at 13, 29, 59, ... elements) relinks the list in its old order."""
    none, before = -2, -1
    index: dict[bytes, int] = {}
    value: list[int] = []
    hashes: list[int] = []
    nxt: list[int] = []
    head = none
    n_bkt, next_resize = 1, 0
    buckets: dict[int, int] = {}

    def link_after(p: int, x: int):
        nonlocal head
        if p == before:
            nxt[x] = head
            head = x
        else:
            nxt[x] = nxt[p]
            nxt[p] = x

    for i, k in enumerate(keys):
        x = index.get(k)
        if x is not None:
            value[x] = i
            continue
        x = len(hashes)
        index[k] = x
        h = string_hash(k)
        hashes.append(h)
        value.append(i)
        nxt.append(none)
        if x + 1 > next_resize:
            want = max(x + 1, 0 if next_resize else 11)
            if want >= n_bkt:
                n_bkt = _next_bucket_count(max(want + 1, n_bkt * 2))
                next_resize = n_bkt
                p, head, buckets, first_bkt = head, none, {}, 0
                while p != none:
                    q = nxt[p]
                    b = hashes[p] % n_bkt
                    if b in buckets:
                        link_after(buckets[b], p)
                    else:
                        link_after(before, p)
                        buckets[b] = before
                        if nxt[p] != none:
                            buckets[first_bkt] = p
                        first_bkt = b
                    p = q
            else:
                next_resize = n_bkt
        b = h % n_bkt
        if b in buckets:
            link_after(buckets[b], x)
        else:
            link_after(before, x)
            if nxt[x] != none:
                buckets[hashes[nxt[x]] % n_bkt] = x
            buckets[b] = before
    out = []
    p = head
    while p != none:
        out.append(value[p])
        p = nxt[p]
    return out
