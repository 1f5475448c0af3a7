"""Worker processes (``WORKERS`` > 1): several serving processes on one HTTP and one gRPC port.

``supervisor`` is the parent: it claims the ports, starts the workers with their SO_REUSEPORT sockets,
replaces one that dies and forwards SIGTERM. Each worker is the whole service in a process of its own;
``link`` is its view of its siblings (readiness, the repository, explicit control) through the run
directory of ``rundir``, and ``metrics`` merges every worker's series for ``/metrics``.
"""
