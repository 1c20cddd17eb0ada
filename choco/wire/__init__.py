"""The wire layer: how a compressed message is laid out in bytes.

* :mod:`choco.wire.framing`: the 16-byte header every message starts with (magic, codec id,
  flags, numel, seed), building a message from a payload, and the receiver's checks.
* :mod:`choco.wire.bits`: bit packing, LSB-first sign bits and fixed-width unsigned fields.
* :mod:`choco.wire.rice`: Rice coding of sorted positions in a fixed-size buffer.

Compressors (:mod:`choco.compress`) define the payloads; every name below is importable
from ``choco.wire`` directly.
"""

from __future__ import annotations

from .bits import (
    pack_bits,
    pack_bits_torch,
    pack_groups,
    pack_uint,
    pack_uint_numpy,
    pack_uint_torch,
    packed_nbytes,
    unpack_bits,
    unpack_bits_torch,
    unpack_groups,
    unpack_uint,
    unpack_uint_numpy,
    unpack_uint_torch,
)
from .framing import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_NUMEL,
    SAME_COMPRESSOR,
    SEED_MASK,
    Header,
    Reserved,
    check_codec,
    check_encoded_length,
    check_length,
    check_numel,
    frame,
    pack_header,
    parse_header,
    payload_tensor,
    read_header,
)
from .rice import (
    RiceStreams,
    rice_decode,
    rice_decode_streams,
    rice_encode,
    rice_encode_streams,
    rice_nbits_bound,
    rice_nbytes,
    rice_parameter,
    rice_streams,
)

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_NUMEL",
    "SAME_COMPRESSOR",
    "SEED_MASK",
    "Header",
    "Reserved",
    "RiceStreams",
    "check_codec",
    "check_encoded_length",
    "check_length",
    "check_numel",
    "frame",
    "pack_bits",
    "pack_bits_torch",
    "pack_groups",
    "pack_header",
    "pack_uint",
    "pack_uint_numpy",
    "pack_uint_torch",
    "packed_nbytes",
    "parse_header",
    "payload_tensor",
    "read_header",
    "rice_decode",
    "rice_decode_streams",
    "rice_encode",
    "rice_encode_streams",
    "rice_nbits_bound",
    "rice_nbytes",
    "rice_parameter",
    "rice_streams",
    "unpack_bits",
    "unpack_bits_torch",
    "unpack_groups",
    "unpack_uint",
    "unpack_uint_numpy",
    "unpack_uint_torch",
]
