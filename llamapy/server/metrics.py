"""llama-server's Prometheus metrics (--metrics, GET /metrics): the same names, help texts and types.

Counters add up every finished request; the throughput gauges cover the requests finished since the
previous scrape (the reference resets that bucket on each read)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    n_prompt: int = 0
    t_prompt_ms: float = 0.0
    n_predicted: int = 0
    t_predicted_ms: float = 0.0

    def add(self, r) -> None:
        self.n_prompt += r.n_prompt_eval
        self.t_prompt_ms += r.t_prompt_ms
        self.n_predicted += r.n_decoded
        self.t_predicted_ms += r.t_gen_ms


class Metrics:
    """Counts finished generations (record() runs on the engine thread) and renders the text format."""

    def __init__(self):
        self.t_start = int(time.time())
        self.total = _Bucket()
        self.bucket = _Bucket()
        self.lock = threading.Lock()

    def record(self, result) -> None:
        with self.lock:
            self.total.add(result)
            self.bucket.add(result)

    def render(self, scheduler, backend) -> str:
        """The Prometheus text exposition (version 0.0.4), as llama-server writes it."""
        with self.lock:
            total, bucket, self.bucket = self.total, self.bucket, _Bucket()
            total = _Bucket(**vars(total))
        n_decode = scheduler.n_steps
        kv_tokens = sum(len(backend.cache_tokens(s.id)) for s in scheduler.slots)
        kv_size = backend.n_ctx * len(scheduler.slots)
        counters = [
            ("prompt_tokens_total", "Number of prompt tokens processed.", total.n_prompt),
            ("prompt_seconds_total", "Prompt process time", total.t_prompt_ms / 1e3),
            ("tokens_predicted_total", "Number of generation tokens processed.", total.n_predicted),
            ("tokens_predicted_seconds_total", "Predict process time", total.t_predicted_ms / 1e3),
            ("n_decode_total", "Total number of llama_decode() calls", n_decode),
            ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             scheduler.n_busy_total / max(n_decode, 1)),
        ]
        gauges = [
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
             1e3 * bucket.n_prompt / bucket.t_prompt_ms if bucket.n_prompt and bucket.t_prompt_ms > 0 else 0.0),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s.",
             1e3 * bucket.n_predicted / bucket.t_predicted_ms
             if bucket.n_predicted and bucket.t_predicted_ms > 0 else 0.0),
            ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", kv_tokens / max(kv_size, 1)),
            ("kv_cache_tokens", "KV-cache tokens.", kv_tokens),
            ("requests_processing", "Number of requests processing.", scheduler.busy_slots()),
            ("requests_deferred", "Number of requests deferred.", scheduler.n_waiting()),
        ]
        lines = []
        for kind, metrics in (("counter", counters), ("gauge", gauges)):
            for name, help, value in metrics:
                lines += [f"# HELP llamacpp:{name} {help}", f"# TYPE llamacpp:{name} {kind}",
                          f"llamacpp:{name} {value:g}" if isinstance(value, float) else f"llamacpp:{name} {value}"]
        return "\n".join(lines) + "\n"
