"""A small OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks, with injectable
faults: 429s, 500s, slow replies, malformed replies and dropped connections."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# plan(question, attempt) -> "ok" | "429" | "500" | "slow" | "malformed" | "empty" | "drop" | "loop"
Plan = Callable[[str, int], str]


def reply_for(question: str) -> str:
    nums = [int(n) for n in re.findall(r"\d+", question)]
    return f"Add the numbers in the question: {' + '.join(map(str, nums)) or '0'} = {sum(nums)}.\nThe answer is {sum(nums)}"


class FakeOpenAI:
    def __init__(self, plan: Plan | None = None, latency_s: float = 0.0, slow_s: float = 3.0):
        self.plan = plan or (lambda q, a: "ok")
        self.latency_s, self.slow_s = latency_s, slow_s
        self.attempts: Counter[str] = Counter()
        self.actions: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

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

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                question = body["messages"][-1]["content"]
                with outer._lock:
                    outer.attempts[question] += 1
                    action = outer.plan(question, outer.attempts[question])
                    outer.actions.append((question, action))
                time.sleep(outer.latency_s)
                if action == "slow":
                    time.sleep(outer.slow_s)
                if action == "drop":
                    self.connection.close()
                    return
                if action in ("429", "500"):
                    err = {"error": {"message": f"injected {action}", "type": "server_error"}}
                    self._send(int(action), json.dumps(err).encode())
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
