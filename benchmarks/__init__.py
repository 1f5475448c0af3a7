"""Benchmarks: the service against raw onnxruntime and a naive FastAPI + PyTorch baseline.

Run ``python -m benchmarks [raw|service|naive|preprocess|all] [--quick]``. Every figure comes from
one run on one machine, so the ratios (service/raw, service/naive) compare like with like.
"""
