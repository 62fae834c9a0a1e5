"""The server's settings, written down once: ``serve.py``'s flags and ``Model.serve``'s keywords both
come from this dataclass (field name -> ``--flag-name``, default, and the help text in ``HELP``)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from classifier.errors import ClassifierError


ABSTRACT = {int: numbers.Integral, float: numbers.Real, str: str}  # a field's type -> the values it takes
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "classifier"
    max_batch: int = 16
    max_delay_ms: float = 2.0
    max_body_mb: float = 20.0
    timeout_s: float = 30.0
    workers: int = 1
    threads: int = 0

    def __post_init__(self):
        for f in fields(self):  # Model.serve's keywords are not typed by argparse: port="8000" is refused here
            value, kind = getattr(self, f.name), type(f.default)
            if not isinstance(value, ABSTRACT[kind]) or (kind is not str and isinstance(value, bool)):
                raise ClassifierError(f"{f.name} must be {TYPE_NAMES[kind]}, got {value!r}")
        for name, low in (("port", 0), ("max_batch", 1), ("workers", 1), ("threads", 0)):
            if getattr(self, name) < low:
                raise ClassifierError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("max_delay_ms", "max_body_mb", "timeout_s"):
            if not getattr(self, name) >= 0 or (name != "max_delay_ms" and getattr(self, name) == 0):
                raise ClassifierError(f"{name} must be {'>= 0' if name == 'max_delay_ms' else '> 0'}, "
                                      f"got {getattr(self, name)}")
        if not self.model_name or "/" in self.model_name:
            raise ClassifierError(f"model_name must be a non-empty name without '/', got {self.model_name!r}")

    @classmethod
    def of(cls, **options) -> "ServeOptions":
        """Options from keywords, refusing unknown ones with a one-line error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ClassifierError(f"unknown serve option(s) {', '.join(unknown)} (options: {', '.join(sorted(known))})")
        return cls(**options)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


HELP = {
    "host": "address to listen on (0.0.0.0: every interface)",
    "port": "TCP port (0: any free port)",
    "model_name": "the model's name in the V2 routes (/v2/models/NAME/...)",
    "max_batch": "dynamic batching: merge concurrent requests into one model call of at most this many images "
                 "(1: batching off)",
    "max_delay_ms": "dynamic batching: how long the first request of a batch waits for others to join",
    "max_body_mb": "largest request body accepted (413 above it)",
    "timeout_s": "a request not answered within this many seconds gets 408 (slow upload) or 503 (busy)",
    "workers": "server processes (each loads the model; one port, the kernel spreads connections)",
    "threads": "ONNX Runtime intra-op threads per process (0: ONNX Runtime's choice); Model.serve keeps the "
               "model as loaded (classifier.load(path, threads=N)) and applies it to --workers processes",
}
