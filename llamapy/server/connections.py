"""Connection limits uvicorn does not have: a deadline for reading a request, a write stall timeout, and a
cap on open connections below the process's file-descriptor limit.

uvicorn's h11 protocol waits for a request's headers and body as long as the client likes, so sockets that
send half a header (or nothing) pile up until accept() runs out of descriptors and the server is
unreachable. `guarded_protocol` returns an h11 protocol class that:

- closes a connection whose request (headers and body) has not fully arrived `read_timeout` seconds
  after its first byte (after the connection opened, for the first request); an idle keep-alive
  connection is closed by uvicorn's own `timeout_keep_alive`; the body of a model upload (/api/blobs/)
  may take longer, but may not stall for `read_timeout`;
- closes a connection whose client has not read what the server writes for `write_timeout` seconds
  (llama-server's -to/--timeout, 600 s by default);
- keeps at most `max_connections` open: one more arriving closes the oldest connection still reading its
  request, or, when every connection is past that stage (answered or being answered), the new one.
"""
from __future__ import annotations

import logging
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("llamapy.server")

FD_RESERVE = 64  # descriptors kept for the model file, the event loop, threads and logs
UPLOAD_PATH = "/api/blobs/"  # a GGUF upload: its deadline is read_timeout between two chunks, not for the whole
BACKLOG = 128  # the listen queue, and how many connections asyncio accepts in one go before any is handled


def connection_cap(wanted: int | None = None) -> int:
    """Connections that may be open at once: below the soft RLIMIT_NOFILE by FD_RESERVE and one accept
    burst (BACKLOG), so accept() never runs out of descriptors (and at most `wanted`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = max(8, soft - FD_RESERVE - BACKLOG) if soft != resource.RLIM_INFINITY else 65536
    return min(cap, wanted) if wanted else cap


_last_warning = [0.0]


def _warn_now_and_then(msg: str) -> None:
    """A warning at most every 10 s: a flood of connections must not become a flood of log lines."""
    now = time.monotonic()
    if now - _last_warning[0] >= 10:
        _last_warning[0] = now
        log.warning(msg)


def guarded_protocol(read_timeout: float, write_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An H11Protocol subclass with these limits (see the module docstring)."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            self._read_timer = self._write_timer = None
            self._reading_since: float | None = None
            if len(self.connections) >= max_connections:
                self._make_room()
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                _warn_now_and_then(f"too many open connections ({max_connections}): closing new ones")
                transport.abort()
                return
            self._start_reading()

        def _make_room(self) -> None:
            reading = [c for c in self.connections if getattr(c, "_reading_since", None) is not None]
            if reading:
                oldest = min(reading, key=lambda c: c._reading_since)
                _warn_now_and_then(f"too many open connections ({max_connections}): closing the oldest ones "
                                   "still sending their request")
                oldest._close()

        def _start_reading(self) -> None:
            self._reading_since = time.monotonic()
            self._read_timer = self.loop.call_later(read_timeout, self._read_timed_out)

        def _stop_reading(self) -> None:
            self._reading_since = None
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            log.info("closing a connection whose request did not arrive within %g s", read_timeout)
            self._close()

        def _close(self) -> None:
            self._stop_reading()
            if not self.transport.is_closing():
                self.transport.abort()

        def data_received(self, data: bytes) -> None:
            if self._reading_since is None and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._start_reading()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._stop_reading()  # the whole request is in (or the connection is done)
            elif self.conn.their_state == h11.SEND_BODY and self._read_timer is not None and self._uploading():
                # a model upload may take longer than read_timeout; it must only not stall that long
                self._read_timer.cancel()
                self._read_timer = self.loop.call_later(read_timeout, self._read_timed_out)

        def _uploading(self) -> bool:
            scope = getattr(self, "scope", None)
            return bool(scope) and str(scope.get("path", "")).startswith(UPLOAD_PATH)

        def connection_lost(self, exc) -> None:
            self._stop_reading()
            self._stop_writing()
            super().connection_lost(exc)

        def _stop_writing(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(write_timeout, self._write_timed_out)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stop_writing()

        def _write_timed_out(self) -> None:
            self._write_timer = None
            log.info("closing a connection whose client has not read for %g s", write_timeout)
            self._close()

    return GuardedH11Protocol
