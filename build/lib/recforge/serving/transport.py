"""uvicorn's h11 protocol with corked writes: one socket send per response instead of one per ASGI message.

uvicorn writes a response's head and body with two ``transport.write`` calls, and asyncio sends each at once,
so every response costs two ``send`` syscalls (and two wake-ups of the client). Buffering the writes made
during one event-loop iteration and flushing them together at the next iteration (what ``TCP_CORK`` does in
the kernel) halves that. Measured on loopback with 50 clients, a constant-answer ASGI app under plain h11:
1,500-1,780 req/s; corked: 1,930-3,110 req/s (docs/serving.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class CorkedTransport:
    """Wraps an asyncio transport: writes of one loop iteration go out as one ``write``; everything else is
    delegated. ``close`` flushes first, so nothing written before it is lost."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(bytes(data))

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedH11Protocol(H11Protocol):
    """``uvicorn.run(..., http=CorkedH11Protocol)``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
