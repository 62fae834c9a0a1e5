"""Run the app under uvicorn: one process, or ``workers`` processes sharing one listening socket.

SIGTERM (and Ctrl-C) stop accepting connections, let the requests in flight finish (up to the request
timeout, plus a margin), stop the batcher, and return: ``serve.py`` then exits 0 on SIGTERM.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

from classifier.errors import ClassifierError
from classifier.serve.metrics import configure_logging, log
from classifier.serve.options import ServeOptions

ENV_SETTINGS = "CLASSIFIER_SERVE_SETTINGS"  # model path + options, for worker processes
WORKER_APP = "classifier.serve.cli:app_from_env"
SHUTDOWN_MARGIN_S = 5.0  # graceful shutdown waits this long beyond the request timeout
WORKER_STARTUP_S = 120  # seconds a worker process may take to start (a busy machine, a large model)


def serve(model, options: ServeOptions) -> None:
    """Serve ``model`` (a ``classifier.Model``) until SIGTERM or Ctrl-C."""
    import uvicorn  # here: only serving needs it

    configure_logging()
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    kwargs = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=options.timeout_s
                  + SHUTDOWN_MARGIN_S, lifespan="on")
    log.info("serving %s as '%s' on http://%s:%d (%d worker(s), max batch %d, max delay %g ms, backend %s)",
             model.path, options.model_name, host, port, options.workers, options.max_batch, options.max_delay_ms,
             model.backend)
    try:
        if options.workers == 1:
            from classifier.serve.app import create_app

            server = uvicorn.Server(uvicorn.Config(create_app(model, options), **kwargs))
            with sigterm_returns():
                server.run(sockets=[sock])
        else:
            serve_workers(model.path, options, sock, kwargs)
    finally:
        sock.close()
    log.info("stopped")


def serve_workers(path: Path, options: ServeOptions, sock: socket.socket, kwargs: dict) -> None:
    """``options.workers`` processes, each loading the model (``cli.app_from_env``), on one socket;
    their Prometheus values are summed through a shared folder."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="classifier-serve-metrics-")
    saved = {k: os.environ.get(k) for k in (ENV_SETTINGS, "PROMETHEUS_MULTIPROC_DIR")}
    os.environ[ENV_SETTINGS] = json.dumps({"model": str(Path(path).resolve()), **options.__dict__})
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
            # a worker imports torch and loads the model before it answers the supervisor's pings
            kwargs = {**kwargs, "timeout_worker_healthcheck": WORKER_STARTUP_S}
        config = uvicorn.Config(WORKER_APP, factory=True, workers=options.workers, **kwargs)
        # what uvicorn.run(workers=N) does, on our socket (older uvicorn versions also take the worker target)
        takes_target = "target" in inspect.signature(Multiprocess).parameters
        extra = {"target": uvicorn.Server(config).run} if takes_target else {}
        Multiprocess(config, sockets=[sock], **extra).run()
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free port), or a one-line error (port in use, bad address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as err:
        sock.close()
        raise ClassifierError(f"cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}") from None
    sock.listen(2048)  # connections made while the model loads wait in the backlog instead of being refused
    sock.set_inheritable(True)
    return sock


class sigterm_returns:  # noqa: N801 - used as a context manager
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again so that the process dies
    of it; a handler of ours takes that second delivery, so the process exits 0 after a clean stop."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM: stopped gracefully"))
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def worker_settings() -> tuple[str, ServeOptions]:
    """(model path, options) handed to worker processes through the environment."""
    settings = json.loads(os.environ[ENV_SETTINGS])
    return settings.pop("model"), ServeOptions.of(**settings)

