"""A fake OpenAI-compatible Chat Completions endpoint on 127.0.0.1 (stdlib asyncio only).

Used by the provider tests and by ``benchmarks/client_rollouts.py``: a real HTTP/1.1 server
(keep-alive, ``Content-Length`` bodies) that answers every ``POST`` after a fixed latency
with whatever its ``reply`` function returns for the raw request body:

- ``(status, payload, headers)``: ``payload`` is bytes/str (sent as is) or a JSON-able value;
- ``CLOSE``: drop the connection without an answer (a transport fault);
- ``(TRUNCATE, payload)``: announce the full length, send half, close.

``python fake_openai.py PORT LATENCY_S [STEPS]`` serves the benchmark's script (``STEPS``
tool calls to ``add``, then a final answer) until killed; it prints ``ready PORT`` first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

CLOSE = "close"
TRUNCATE = "truncate"
Reply = Callable[[bytes], Any]


def completion(content: str | None = None, tool_calls: list[tuple[str, str, dict[str, Any]]] | None = None,
               finish_reason: str | None = None, usage: tuple[int, int] = (11, 7), reasoning: str | None = None,
               model: str = "fake") -> dict[str, Any]:
    """A Chat Completions body; ``tool_calls`` are ``(id, name, arguments)``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for cid, name, args in tool_calls
        ]
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop")}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


def bench_reply(steps: int) -> Reply:
    """The benchmark's script: ``steps`` calls of ``add`` then an answer; the position in the
    episode is the number of assistant turns already in the request (no JSON parse needed)."""
    bodies = [
        json.dumps(completion(tool_calls=[(f"call_{i}", "add", {"a": i, "b": 1})])).encode() for i in range(steps)
    ] + [json.dumps(completion(f"done after {steps} steps")).encode()]

    def reply(body: bytes) -> Any:
        index = body.count(b'"assistant"')
        return 200, bodies[min(index, steps)], {}

    return reply


class _Http(asyncio.Protocol):
    def __init__(self, server: FakeOpenAI) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[Any] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.server.requests += 1
            answer = self.server.reply(body)
            loop = asyncio.get_running_loop()
            if self.server.latency_s:
                loop.call_later(self.server.latency_s, self._send, answer)
            else:
                self._send(answer)

    def _send(self, answer: Any) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if answer == CLOSE:
            t.close()
            return
        truncate = isinstance(answer, tuple) and answer[0] == TRUNCATE
        if truncate:
            status, payload, headers = 200, answer[1], {}
        else:
            status, payload, headers = answer
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        head = [f"HTTP/1.1 {status} X", f"content-length: {len(payload)}"]
        if "content-type" not in {k.lower() for k in headers}:
            head.append("content-type: application/json")
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        if truncate:
            t.write(data[: len(data) - len(payload) // 2])
            t.close()
        else:
            t.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class FakeOpenAI:
    """``with FakeOpenAI(reply, latency_s) as fake:`` serves on ``fake.base_url`` from a thread."""

    def __init__(self, reply: Reply, latency_s: float = 0.0, port: int = 0) -> None:
        self.reply = reply
        self.latency_s = latency_s
        self.port = port
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        # a backlog like real servers (uvicorn: 2048): hundreds of episodes connect at once
        server = await asyncio.get_running_loop().create_server(lambda: _Http(self), "127.0.0.1", self.port,
                                                                backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        if ready:
            ready()
        async with server:
            await server.serve_forever()

    def __enter__(self) -> FakeOpenAI:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            task = self._loop.create_task(self.serve(started.set))
            try:
                self._loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake endpoint did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        if self._thread is not None:
            self._thread.join(10)


if __name__ == "__main__":
    port, latency = int(sys.argv[1]), float(sys.argv[2])
    fake = FakeOpenAI(bench_reply(int(sys.argv[3]) if len(sys.argv) > 3 else 5), latency, port)
    asyncio.run(fake.serve(lambda: print(f"ready {fake.port}", flush=True)))
