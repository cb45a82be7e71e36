"""Teacher requests to an OpenAI-compatible chat API (OpenAI, Gemini's OpenAI endpoint, a vLLM or
llama.cpp server): bounded concurrency, a request-rate limit, retries with backoff on 429, 5xx,
timeouts and dropped connections, and a response cache. The API key is read from the environment
variable the config names; it is never a parameter and never written anywhere."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from . import redaction
from .cache import ResponseCache


class ApiError(RuntimeError):
    """The API cannot be used as configured (e.g. the key variable is unset)."""


@dataclass(frozen=True)
class ApiSettings:
    base_url: str | None
    model: str
    api_key_env: str | None
    concurrency: int
    requests_per_minute: float | None
    max_retries: int
    timeout_s: float
    temperature: float
    max_tokens: int
    seed: int | None
    max_retry_after_s: float = 120.0


def settings_for(cfg) -> ApiSettings:
    """A generate cell's API settings: the served model name defaults to the registry's id for the teacher."""
    from . import models

    spec = models.REGISTRY.get(cfg.teacher)
    return ApiSettings(base_url=cfg.api.base_url, model=cfg.api.model or (spec.hub_id if spec else cfg.teacher),
                       api_key_env=cfg.api.api_key_env, concurrency=cfg.api.concurrency,
                       requests_per_minute=cfg.api.requests_per_minute, max_retries=cfg.api.max_retries,
                       timeout_s=cfg.api.timeout_s, temperature=cfg.temperature, max_tokens=cfg.max_new_tokens,
                       seed=cfg.seed, max_retry_after_s=cfg.api.max_retry_after_s)


def requirement(env: str | None):
    from .environment import Requirement

    return Requirement(("api-key", env or ""), lambda dry_run: api_key(env))


def api_key(env: str | None) -> str:
    """The key from the named environment variable; local servers need none."""
    if env is None:
        return "EMPTY"
    key = os.environ.get(env)
    if not key:
        raise ApiError(f"the API key variable {env} is not set: export {env}=... before running "
                       f"(or set api_key_env: null for a local server that needs no key)")
    redaction.register(key)  # from here on, no stored or printed message can carry it
    return key


class RateLimiter:
    """Spaces request starts to at most `per_minute`, and holds every worker back while a server has
    asked (Retry-After) for a pause. A small hand-written limiter: one asyncio lock, no dependency
    among ours does both."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """No request starts for `seconds` (a 429's Retry-After applies to the whole client)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next, self._paused_until)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)):
        return True  # APITimeoutError is an APIConnectionError
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _describe(exc: BaseException) -> str:
    """A failed request's reason as a row stores it: redacted first, then cut (cutting first could leave
    part of a key that a server quoted back, which no longer matches the key to mask)."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {redaction.redact(str(exc))[:200]}"


def retry_after(exc: BaseException) -> float | None:
    """The seconds a server asked to wait (Retry-After, or retry-after-ms), where it said so."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None  # an HTTP date: fall back to backoff
    return None


def request_for(settings: ApiSettings, messages: list[dict[str, str]]) -> dict[str, Any]:
    """What identifies a request in the cache: model, messages and sampling (not the URL or key)."""
    return {"model": settings.model, "messages": messages, "temperature": settings.temperature,
            "max_tokens": settings.max_tokens, "seed": settings.seed}


def _wait(settings: ApiSettings, limiter: RateLimiter):
    """Exponential backoff with jitter, or the server's Retry-After (capped) when it gave one; a
    Retry-After also pauses every other worker through the limiter."""
    from tenacity import wait_random_exponential

    backoff = wait_random_exponential(multiplier=0.5, max=30)

    def wait(state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after(exc) if exc is not None else None
        if asked is None:
            return backoff(state)
        seconds = min(asked, settings.max_retry_after_s)
        limiter.pause(seconds)
        return seconds

    return wait


async def _one(client, settings: ApiSettings, request: dict[str, Any], limiter: RateLimiter,
               sem: asyncio.Semaphore) -> dict[str, Any]:
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    attempts = 0
    async with sem:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable), stop=stop_after_attempt(settings.max_retries + 1),
                wait=_wait(settings, limiter), reraise=True,
            ):
                with attempt:
                    attempts += 1
                    await limiter.wait()
                    resp = await client.chat.completions.create(**{k: v for k, v in request.items() if v is not None})
        except Exception as exc:  # recorded per row: a failed request never stops the run
            return {"ok": False, "reason": _describe(exc), "attempts": attempts}
    try:
        text = resp.choices[0].message.content
        if not isinstance(text, str):
            raise TypeError("no text content in the reply")
    except (AttributeError, IndexError, TypeError) as exc:
        return {"ok": False, "reason": f"malformed reply: {exc}", "attempts": attempts}
    if not text.strip():  # a 200 with nothing in it is a failure to retry, never a cached answer
        return {"ok": False, "reason": "empty reply", "attempts": attempts}
    usage = getattr(resp, "usage", None)
    return {"ok": True, "text": text, "attempts": attempts,
            "completion_tokens": getattr(usage, "completion_tokens", None),
            "finish_reason": resp.choices[0].finish_reason}


async def _run_all(settings: ApiSettings, items: Sequence[tuple[str, list[dict[str, str]]]], cache: ResponseCache,
                   on_result: Callable[[str, dict[str, Any]], None]) -> dict[str, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=settings.base_url, api_key=api_key(settings.api_key_env),
                                max_retries=0, timeout=settings.timeout_s)
    sem, limiter = asyncio.Semaphore(settings.concurrency), RateLimiter(settings.requests_per_minute)
    counts = {"cached": 0, "sent": 0, "failed": 0}

    async def handle(item_id: str, messages: list[dict[str, str]]) -> None:
        request = request_for(settings, messages)
        hit = cache.get(request)
        if hit is not None:
            counts["cached"] += 1
            on_result(item_id, {**hit, "cached": True})
            return
        result = await _one(client, settings, request, limiter, sem)
        counts["sent"] += 1
        if result["ok"]:
            cache.put(request, result)
        else:
            counts["failed"] += 1
        on_result(item_id, {**result, "cached": False})

    tasks: list[Awaitable[None]] = [handle(i, m) for i, m in items]
    try:
        for fut in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=f"api {settings.model}", leave=False):
            await fut
    finally:
        await client.close()
    return counts


def run_requests(settings: ApiSettings, items: Sequence[tuple[str, list[dict[str, str]]]],
                 on_result: Callable[[str, dict[str, Any]], None], cache: ResponseCache | None = None) -> dict[str, int]:
    """Send every (id, messages) item; `on_result` sees each result as it arrives (save it there).

    Runs its own event loop in a worker thread, so it works inside a Jupyter kernel's running loop.
    """
    api_key(settings.api_key_env)  # fail before any request if the key is missing
    cache = cache or ResponseCache()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _run_all(settings, items, cache, on_result)).result()
