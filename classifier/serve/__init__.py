"""An inference server for trained models: the Open Inference Protocol ("V2", so Triton and KServe
clients work unchanged) and ``POST /predict`` for image files, with dynamic batching, limits and
Prometheus metrics. ``python serve.py --model PATH`` or ``classifier.load(PATH).serve(port=8000)``;
see docs/serving.md.

Modules: ``options`` (the settings), ``batching`` (merging requests into one model call), ``v2`` (the
protocol's messages), ``app`` (the routes), ``metrics`` (Prometheus, request log), ``server``
(uvicorn, workers, shutdown), ``cli`` (serve.py).
"""
