"""llama.cpp's file types (LLAMA_FTYPE: the number in general.file_type) as one table.

Each row: the name llama-quantize takes, the id, the tensor type most tensors get, what
`llama-quantize --help` says of it, and the name the reference prints for a file of that type
(llama_model_ftype_name). Quantize (type names, help, mixes), convert (--outtype), the model
description and `info` all read this table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .constants import TensorType as T


class LlamaFtype:
    """llama.cpp's LLAMA_FTYPE ids: the number in general.file_type and in old tutorials' command lines."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ4_NL = 25
    MOSTLY_BF16 = 32


F = LlamaFtype
FTYPE_GUESSED = 1024  # or-ed into a file type the loader guessed (no general.file_type)


@dataclass(frozen=True)
class FileType:
    name: str  # as llama-quantize takes it: "Q4_K_M"
    ftype: int  # LLAMA_FTYPE id
    tensor_type: int  # the type most tensors get
    desc: str  # what llama-quantize --help says of it
    label: str = ""  # llama_model_ftype_name ("Q4_K - Medium"); "" for aliases and COPY
    offered: bool = True  # False: known when read, not a type llamapy writes


# In llama-quantize's --help order: a legacy number names the first row with that ftype (15 -> "Q4_K").
# name | LLAMA_FTYPE | type most tensors get | --help description | llama_model_ftype_name ("" for aliases)
_TABLE = """
Q4_0   | MOSTLY_Q4_0   | Q4_0   | 4.50 bpw                                              | Q4_0
Q4_1   | MOSTLY_Q4_1   | Q4_1   | 5.00 bpw                                              | Q4_1
Q5_0   | MOSTLY_Q5_0   | Q5_0   | 5.50 bpw                                              | Q5_0
Q5_1   | MOSTLY_Q5_1   | Q5_1   | 6.00 bpw                                              | Q5_1
Q2_K   | MOSTLY_Q2_K   | Q2_K   | 2.62 bpw Q2_K + Q3_K attn_v/attn_output/ffn_down      | Q2_K - Medium
Q3_K   | MOSTLY_Q3_K_M | Q3_K   | alias for Q3_K_M                                      |
Q3_K_S | MOSTLY_Q3_K_S | Q3_K   | 3.44 bpw Q3_K                                         | Q3_K - Small
Q3_K_M | MOSTLY_Q3_K_M | Q3_K   | 3.44 bpw Q3_K + Q4_K/Q5_K attn_v/attn_output/ffn_down | Q3_K - Medium
Q3_K_L | MOSTLY_Q3_K_L | Q3_K   | 3.44 bpw Q3_K + Q5_K attn_v/attn_output/ffn_down      | Q3_K - Large
IQ4_NL | MOSTLY_IQ4_NL | IQ4_NL | 4.50 bpw non-linear                                   | IQ4_NL - 4.5 bpw
Q4_K   | MOSTLY_Q4_K_M | Q4_K   | alias for Q4_K_M                                      |
Q4_K_S | MOSTLY_Q4_K_S | Q4_K   | 4.50 bpw Q4_K + Q5_K first attn_v/ffn_down            | Q4_K - Small
Q4_K_M | MOSTLY_Q4_K_M | Q4_K   | 4.50 bpw Q4_K + Q6_K half of attn_v/ffn_down          | Q4_K - Medium
Q5_K   | MOSTLY_Q5_K_M | Q5_K   | alias for Q5_K_M                                      |
Q5_K_S | MOSTLY_Q5_K_S | Q5_K   | 5.50 bpw Q5_K                                         | Q5_K - Small
Q5_K_M | MOSTLY_Q5_K_M | Q5_K   | 5.50 bpw Q5_K + Q6_K half of attn_v/ffn_down          | Q5_K - Medium
Q6_K   | MOSTLY_Q6_K   | Q6_K   | 6.56 bpw                                              | Q6_K
Q8_0   | MOSTLY_Q8_0   | Q8_0   | 8.50 bpw                                              | Q8_0
F16    | MOSTLY_F16    | F16    | 16.00 bpw                                             | F16
BF16   | MOSTLY_BF16   | BF16   | 16.00 bpw                                             | BF16
F32    | ALL_F32       | F32    | 32.00 bpw                                             | all F32
COPY   | ALL_F32       | F32    | only copy tensors, no quantizing                      |
"""
# read, named in a model's description, but not written by llamapy
_READ_ONLY = """
Q2_K_S | MOSTLY_Q2_K_S | Q2_K   | not written by llamapy                                | Q2_K - Small
"""


def _rows(table: str, offered: bool) -> list[FileType]:
    out = []
    for line in table.strip().splitlines():
        name, ftype, ttype, desc, label = (c.strip() for c in line.split("|"))
        out.append(FileType(name, getattr(F, ftype), T[ttype], desc, label, offered))
    return out


FILE_TYPES = tuple(_rows(_TABLE, True) + _rows(_READ_ONLY, False))

QUANT_OPTIONS = [o for o in FILE_TYPES if o.offered]

# ftype -> the type most tensors get, for the file types llamapy writes
DEFAULT_TYPE = {o.ftype: o.tensor_type for o in QUANT_OPTIONS}

# general.file_type -> the name the reference prints (llama_model_ftype_name)
FILE_TYPE_NAMES = {o.ftype: o.label for o in FILE_TYPES if o.label}

# the type of the most common tensor -> the ftype a file without general.file_type is taken for
GUESSED_FTYPE = {
    T.F32: F.ALL_F32, T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q4_0: F.MOSTLY_Q4_0,
    T.Q4_1: F.MOSTLY_Q4_1, T.Q5_0: F.MOSTLY_Q5_0, T.Q5_1: F.MOSTLY_Q5_1, T.Q8_0: F.MOSTLY_Q8_0,
    T.Q2_K: F.MOSTLY_Q2_K, T.Q3_K: F.MOSTLY_Q3_K_M, T.Q4_K: F.MOSTLY_Q4_K_M, T.Q5_K: F.MOSTLY_Q5_K_M,
    T.Q6_K: F.MOSTLY_Q6_K, T.IQ4_NL: F.MOSTLY_IQ4_NL,
}


def parse_ftype(text: str) -> FileType | None:
    """A quantization type by name (any case) or by its legacy number; None if it is neither."""
    up = text.strip().upper()
    for o in QUANT_OPTIONS:
        if o.name == up:
            return o
    if re.fullmatch(r"[+-]?\d+", up):
        for o in QUANT_OPTIONS:
            if o.ftype == int(up):
                return o
    return None


def options_help() -> str:
    """The table `llamapy quantize --help` prints: legacy number, name, what it is."""
    lines = []
    for o in QUANT_OPTIONS:
        num = f"{o.ftype:2d}  or  " if o.name != "COPY" else " " * 8
        lines.append(f"  {num}{o.name:<7} : {o.desc}")
    return "\n".join(lines)


def ftype_label(ftype: int | None) -> str:
    """The reference's name of a file type, as in its one-line model description."""
    if ftype is None:
        return "unknown file type"
    return FILE_TYPE_NAMES.get(int(ftype), f"file type {ftype}")


def ftype_name(ftype: int) -> str:
    """The short name of a file type (F16, Q8_0, Q4_K_M), as in file names."""
    for o in FILE_TYPES:
        if o.ftype == ftype and o.label:
            return o.name
    raise KeyError(ftype)
