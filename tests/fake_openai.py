"""A small OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks, with injectable
faults: 429s (with a Retry-After), 500s, 401s that echo the caller's key, slow replies, malformed and
empty replies, and dropped connections.

It holds the load it is used for: a listen backlog of 1024 (http.server's default of 5 drops
connections once some 30 clients connect at once) and one thread per connection. Run it as its own
process (`python -m tests.fake_openai --latency 0.2`, which prints its URL) where the client's own CPU
cost is measured, so that server and client do not share one interpreter lock.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# plan(question, attempt) -> "ok" | "429" | "500" | "401" | "slow" | "malformed" | "empty" | "drop" | "loop"
Plan = Callable[[str, int], str]


def reply_for(question: str) -> str:
    nums = [int(n) for n in re.findall(r"\d+", question)]
    return f"Add the numbers in the question: {' + '.join(map(str, nums)) or '0'} = {sum(nums)}.\nThe answer is {sum(nums)}"


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the listen backlog: http.server's 5 refuses connections under a burst
    daemon_threads = True
    allow_reuse_address = True


class FakeOpenAI:
    def __init__(self, plan: Plan | None = None, latency_s: float = 0.0, slow_s: float = 3.0, port: int = 0,
                 retry_after: str | None = None, key_message: Callable[[str], str] | None = None):
        """`retry_after`: the Retry-After header a 429 carries; `key_message(key)`: a 401's error message,
        made from the key the request carried (a server that quotes it back)."""
        self.plan = plan or (lambda q, a: "ok")
        self.latency_s, self.slow_s, self.retry_after = latency_s, slow_s, retry_after
        self.key_message = key_message or (lambda key: "Incorrect API key provided")
        self.attempts: Counter[str] = Counter()
        self.actions: list[tuple[str, str]] = []
        self.times: list[tuple[float, str, str]] = []  # (time.monotonic() on arrival, question, action)
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answered(self) -> Counter[str]:
        """Questions that got a good reply, with how often."""
        return Counter(q for q, a in self.actions if a == "ok")

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: Nagle would hold the body ~40 ms

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._send(code, json.dumps({"error": {"message": message, "type": "server_error"}}).encode(), headers)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                question = body["messages"][-1]["content"]
                with outer._lock:
                    outer.attempts[question] += 1
                    action = outer.plan(question, outer.attempts[question])
                    outer.actions.append((question, action))
                    outer.times.append((time.monotonic(), question, action))
                time.sleep(outer.latency_s)
                if action == "slow":
                    time.sleep(outer.slow_s)
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if action == "429":
                    self._error(429, "injected 429", {"Retry-After": outer.retry_after} if outer.retry_after else None)
                    return
                if action == "500":
                    self._error(500, "injected 500")
                    return
                if action == "401":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    self._error(401, outer.key_message(key))
                    return
                if action == "malformed":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                    return
                text = "" if action == "empty" else reply_for(question)
                if action == "loop":  # a small model that keeps going after its answer line
                    last = text.splitlines()[-1]
                    text = text + (" " + last) * 5 + "\nAnd so on.\n" + last
                reply = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                         "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10 + len(text.split())}}
                self._send(200, json.dumps(reply).encode())

        return Handler


def main() -> int:
    p = argparse.ArgumentParser(description="serve the fake OpenAI API until stopped; prints its base URL")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    with FakeOpenAI(latency_s=a.latency, port=a.port) as srv:
        print(srv.base_url, flush=True)
        try:
            sys.stdin.read()  # until the parent closes our stdin (or kills us)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
