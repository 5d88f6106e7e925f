"""Byte links to an FPGA controller: a pyserial port (any ``serial_for_url`` URL) or an in-process endpoint.

A link only moves bytes; framing, retries and meaning live above it.  Every
link counts the bytes it moved and logs raw traffic at DEBUG level.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import serial

from drivers.errors import LinkError

log = logging.getLogger(__name__)


class Link(Protocol):
    bytes_tx: int
    bytes_rx: int

    def write(self, data: bytes) -> None: ...

    def read(self, timeout_sec: float) -> bytes:
        """Bytes that arrived within ``timeout_sec`` (``b""`` if none)."""
        ...

    def close(self) -> None: ...


def _log_traffic(direction: str, data: bytes) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %d bytes: %s", direction, len(data), data[:256].hex(" ") + (" ..." if len(data) > 256 else ""))


def _check_socket_url(url: str) -> None:
    """pyserial reports a bad ``socket://`` port with its option parser's message; say what is wrong."""
    host, _, port = url[len("socket://"):].partition("?")[0].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LinkError(f"cannot open serial link {url!r}: expected socket://HOST:PORT with PORT in 1..65535 "
                        "(the port `hil emulator serve --tcp` printed)")


class SerialLink:
    """A pyserial port: ``/dev/ttyUSB0``, ``/dev/pts/3``, ``socket://host:port``, ``loop://`` ..."""

    def __init__(self, url: str, baudrate: int = 3_000_000, open_timeout_sec: float = 2.0):
        if url.startswith("socket://"):
            _check_socket_url(url)
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05, write_timeout=10.0,
                                               do_not_open=True)
            if url.startswith("socket://"):
                self._open_with_retry(url, open_timeout_sec)
            else:
                self._port.open()
        except (serial.SerialException, ValueError, OSError) as exc:
            raise LinkError(
                f"cannot open serial link {url!r}: {exc}. Check the device path or host:port and that "
                "the board (or `hil emulator serve`) is running"
            ) from None
        self.url = url
        self.baudrate = baudrate
        """Nominal rate (on socket:// only a figure for comparisons)."""
        self.bytes_tx = 0
        self.bytes_rx = 0

    def _open_with_retry(self, url: str, open_timeout_sec: float) -> None:
        deadline = time.monotonic() + open_timeout_sec
        while True:
            try:
                self._port.open()
                return
            except serial.SerialException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def write(self, data: bytes) -> None:
        _log_traffic("tx", data)
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"serial link {self.url!r} failed while writing: {exc}") from None
        self.bytes_tx += len(data)

    _DRAIN_CAP = 1 << 20  # bytes one read() call gathers at most, so a streaming peer cannot hold it

    def read(self, timeout_sec: float) -> bytes:
        """Block up to ``timeout_sec`` for the first byte, then take everything already there in bulk.

        pyserial's ``in_waiting`` is exact on real ports but only 0 or 1 on ``socket://``, so the
        drain reads with a zero timeout and a large size instead: one system call per burst, not
        per byte, on every kind of port.
        """
        port = self._port
        try:
            port.timeout = max(timeout_sec, 0.0)
            data = port.read(1)
            if data:
                port.timeout = 0
                chunks = [data]
                got = 1
                while got < self._DRAIN_CAP:
                    more = port.read(self._DRAIN_CAP - got)
                    if not more:
                        break
                    chunks.append(more)
                    got += len(more)
                data = b"".join(chunks)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"serial link {self.url!r} failed while reading: {exc}") from None
        if data:
            _log_traffic("rx", data)
            self.bytes_rx += len(data)
        return data

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass


class InProcessLink:
    """A link whose far end is a :class:`firmware_stub.firmware.FirmwareEndpoint` in this process.

    Bytes still go through the real codec both ways; only the OS is left out.
    """

    def __init__(self, endpoint) -> None:
        self.endpoint = endpoint
        self._rx = bytearray()
        self.bytes_tx = 0
        self.bytes_rx = 0

    def write(self, data: bytes) -> None:
        _log_traffic("tx", data)
        self.bytes_tx += len(data)
        self._rx += self.endpoint.receive(bytes(data))

    def read(self, timeout_sec: float) -> bytes:
        if not self._rx:
            # the endpoint answers synchronously, so nothing more can come: behave like an idle line
            time.sleep(min(timeout_sec, 0.01))
            return b""
        data = bytes(self._rx)
        self._rx.clear()
        if data:
            _log_traffic("rx", data)
            self.bytes_rx += len(data)
        return data

    def close(self) -> None:
        pass
