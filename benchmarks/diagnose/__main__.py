"""``python -m benchmarks.diagnose``: see :mod:`benchmarks.diagnose`."""

from benchmarks.diagnose.run import main

if __name__ == "__main__":
    raise SystemExit(main())
