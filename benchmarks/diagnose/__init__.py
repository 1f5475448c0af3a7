"""``python -m benchmarks.diagnose [service] [pytriton] ...``: where a server spends its CPU per request.

For each target (the service as ``service_bench`` starts it, or a peer) under wrk at one concurrency
with one JPEG per request:

1. a clean window: wrk's figures and every thread's CPU time from ``/proc/<pid>/task/<tid>/stat``
   (all processes of the server's process group: Triton's server and backend stub too);
2. a profiled window: ``py-spy record --native`` on every Python process (collapsed stacks, turned
   into a flamegraph SVG here), ``perf record`` on the non-Python ones (tritonserver) when perf works;
   samples whose innermost frame is a wait are counted apart: blocked, or waiting for the GIL.

Threads are given roles from their stacks (event loop, decode pool, inference, onnxruntime pool,
...); each role's CPU comes from window 1 and is split over functions by window 2's samples, so the
figures read as microseconds of CPU per request. Everything lands in ``bench-results/diagnose-<time>/``.

One module a job: ``targets`` starts a server and drives wrk, ``benchmarks.procstat`` reads ``/proc``,
``profilers`` runs py-spy and perf, ``stacks`` reads and classifies their samples, ``flamegraph``
draws them, ``report`` attributes CPU and renders the text, ``run`` puts them together (the CLI).
"""
