"""ChannelData (RFC 8656 §12.4) and the one stream framer for STUN over TCP/TLS.

Over UDP every datagram is one STUN message or one ChannelData message; the
first two bits tell them apart (00 STUN, 01 ChannelData; RFC 8656 §12,
RFC 7983's demultiplexing). Over TCP and TLS the messages follow each other
in one byte stream: a STUN message is 20 + its length field bytes, a
ChannelData message 4 + its length, padded to a multiple of 4 (§12.5).
:class:`StreamFramer` cuts that stream into frames; anything else in the
stream means the two ends lost synchronisation, which the framer reports
once (:class:`~natkit.errors.MalformedMessage`) and then refuses more input.

Pure: no sockets, no clocks.
"""

from __future__ import annotations

import struct

from ..errors import MalformedMessage

CHANNEL_MIN = 0x4000  # RFC 8656 §12: 0x4000 through 0x4FFF
CHANNEL_MAX = 0x4FFF
MAX_STREAM_BUFFER = 0x10000 + 20  # the largest frame: a STUN message with a 65535-byte length field

_CD = struct.Struct("!HH")
_pack_cd = _CD.pack
_unpack_cd = _CD.unpack_from


def is_channel_data(data: bytes | memoryview) -> bool:
    """True when the first two bits are 01 (RFC 8656 §12)."""
    return len(data) >= 4 and 0x40 <= data[0] < 0x80


def encode_channel_data(channel: int, payload: bytes, *, stream: bool = False) -> bytes:
    """A ChannelData message; padded to 4 bytes when sent over TCP/TLS (``stream``)."""
    if stream and len(payload) & 3:
        return _pack_cd(channel, len(payload)) + payload + b"\x00" * (-len(payload) & 3)
    return _pack_cd(channel, len(payload)) + payload


def decode_channel_data(data: bytes | memoryview) -> tuple[int, bytes]:
    """``(channel number, application data)`` of one ChannelData message.

    Over UDP, bytes after the announced length (padding) are ignored
    (§12.5). Raises :class:`MalformedMessage` when the header is short, the
    channel number is outside 0x4000-0x4FFF or the length exceeds the data.
    """
    if len(data) < 4:
        raise MalformedMessage(f"{len(data)} bytes, a ChannelData header needs 4", attribute="ChannelData", offset=0)
    channel, length = _unpack_cd(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise MalformedMessage(f"channel number 0x{channel:04x} is outside 0x4000-0x4FFF", attribute="ChannelData", offset=0)
    if 4 + length > len(data):
        raise MalformedMessage(f"length {length} but only {len(data) - 4} bytes of data", attribute="ChannelData", offset=2)
    return channel, bytes(data[4:4 + length])


class StreamFramer:
    """Cuts a TCP/TLS byte stream into STUN and ChannelData frames (RFC 8656 §12.5, RFC 6062).

    ``feed(data)`` returns the complete frames found so far: STUN frames as
    the whole message (bytes, for :func:`natkit.stun.codec.decode`),
    ChannelData frames without their padding. Work is linear in the bytes
    fed. A first byte that is neither STUN (00) nor ChannelData (01) means
    the stream is out of step: ``feed`` raises :class:`MalformedMessage`
    once and ``broken`` stays set (nothing after it can be trusted).
    """

    __slots__ = ("_buf", "broken", "offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken: MalformedMessage | None = None
        self.offset = 0  # stream offset of the first buffered byte

    @property
    def pending(self) -> int:
        """Bytes buffered toward an incomplete frame."""
        return len(self._buf)

    def incomplete(self, why: str) -> MalformedMessage:
        """The error for a stream that stopped inside a frame (its length field promised more bytes)."""
        return MalformedMessage(
            f"{self.pending} bytes of a frame arrived and the rest never did ({why}): "
            "a length field that does not match the bytes sent", attribute="stream", offset=self.offset)

    def feed(self, data: bytes) -> list[bytes]:
        if self.broken is not None:
            raise self.broken
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos, n = 0, len(buf)
        while n - pos >= 4:
            first = buf[pos]
            if first < 0x40:
                if n - pos < 20:
                    break
                total = 20 + ((buf[pos + 2] << 8) | buf[pos + 3])
            elif first < 0x80:
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                total = 4 + length + (-length & 3)
            else:
                self.broken = MalformedMessage(
                    f"first byte 0x{first:02x} is neither STUN nor ChannelData: the stream lost framing "
                    "(a length field that does not match the bytes sent)",
                    attribute="stream", offset=self.offset + pos)
                del buf[:]
                raise self.broken
            if n - pos < total:
                break
            if first < 0x40:
                frames.append(bytes(buf[pos:pos + total]))
            else:
                frames.append(bytes(buf[pos:pos + 4 + length]))
            pos += total
        if pos:
            del buf[:pos]
            self.offset += pos
        return frames
