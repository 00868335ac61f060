"""MSB-first bit packing over Python big ints, with Elias-gamma and strict bounds on reads."""

from __future__ import annotations

from common.errors import CodecError


class BitWriter:
    """Appends fixed-width unsigned fields; `getvalue` pads with zero bits to a whole byte."""

    def __init__(self) -> None:
        self._fields: list[tuple[int, int]] = []  # (value, width)
        self.nbits = 0

    def write(self, value: int, width: int) -> None:
        """Append value in exactly `width` bits (value < 2**width)."""
        if value < 0 or value >> width:
            raise CodecError(f"value {value} does not fit in {width} bits")
        if width:
            self._fields.append((value, width))
            self.nbits += width

    def write_gamma(self, value: int) -> None:
        """Elias-gamma code of value >= 1: (n-1) zeros then value's n bits."""
        if value < 1:
            raise CodecError(f"Elias-gamma needs a value >= 1, got {value}")
        self.write(value, 2 * value.bit_length() - 1)

    def getvalue(self) -> bytes:
        """The packed bytes (MSB first, zero padded)."""
        acc = _join(self._fields)
        pad = -self.nbits % 8
        return (acc << pad).to_bytes((self.nbits + pad) // 8, "big")


def _join(fields: list[tuple[int, int]]) -> int:
    """Concatenate (value, width) fields into one int by balanced merging (no quadratic shifting)."""
    if not fields:
        return 0
    items = list(fields)
    while len(items) > 1:
        merged = [((a << wb) | b, wa + wb) for (a, wa), (b, wb) in zip(items[::2], items[1::2], strict=False)]
        if len(items) % 2:
            merged.append(items[-1])
        items = merged
    return items[0][0]


class BitReader:
    """Reads fixed-width fields from a byte string; every overrun raises CodecError."""

    def __init__(self, data: bytes) -> None:
        self._val = int.from_bytes(data, "big")
        self.nbits = 8 * len(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        """Unread bits (padding included)."""
        return self.nbits - self.pos

    def read(self, width: int) -> int:
        """Next `width` bits as an unsigned int."""
        if width > self.remaining:
            raise CodecError("payload truncated")
        self.pos += width
        return (self._val >> (self.nbits - self.pos)) & ((1 << width) - 1)

    def read_gamma(self, max_value: int) -> int:
        """Elias-gamma value in [1, max_value]; rejects longer codes without reading them."""
        max_zeros = max_value.bit_length() - 1
        window = min(max_zeros + 1, self.remaining)
        if window <= 0:
            raise CodecError("payload truncated")
        head = (self._val >> (self.nbits - self.pos - window)) & ((1 << window) - 1)
        if head == 0:
            raise CodecError("Elias-gamma value too large or payload truncated")
        zeros = window - head.bit_length()
        self.pos += zeros
        value = self.read(zeros + 1)
        if value > max_value:
            raise CodecError(f"Elias-gamma value {value} exceeds {max_value}")
        return value

    def finish(self) -> None:
        """Require that only zero padding (< 8 bits) is left."""
        rest = self.remaining
        if rest >= 8:
            raise CodecError(f"payload has {rest // 8} trailing byte(s)")
        if self._val & ((1 << rest) - 1):
            raise CodecError("non-zero padding bits")
