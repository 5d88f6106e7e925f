"""One BLAS thread per process unless the user says otherwise: this stack's matrices are small.

A crossbar of 128 x 128 devices is about the size at which a multi-threaded BLAS starts its
threads, and processes of this stack run side by side: a training run beside an emulator server,
a sweep's workers, the test suite's workers.  With the BLAS library's default (one thread per
core) each process's threads spin waiting for cores the others hold.
``benchmarks/bench_blas_threads.py`` prints what that costs: on the 2-core development machine,
two loops of 128 x 128 products side by side took about ten times as long with the default
threads as with one, while a digits training run, whose products are mostly smaller, changed by
a few per cent.  One thread loses nothing at these sizes.

:func:`limit_blas_threads` is called by the ``hil`` command line and the test suite.  Code that
imports the stack as a library (a notebook, a script) keeps its own thread settings; call it there
too when runs share the machine.  A user's own ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or
``MKL_NUM_THREADS`` stands; ``HIL_BLAS_THREADS=N`` (or ``default``) overrides this module's choice.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads() -> int | None:
    """Limit BLAS to one thread (or ``HIL_BLAS_THREADS``) in this process and the processes it starts.

    Returns the limit set, or None where the user's setting (or ``HIL_BLAS_THREADS=default``)
    stands.  Raises ValueError for a ``HIL_BLAS_THREADS`` that is neither a positive whole number
    nor ``default``.
    """
    choice = os.environ.get("HIL_BLAS_THREADS", "").strip()
    if choice == "default" or (not choice and any(k in os.environ for k in THREAD_ENV)):
        return None
    if choice and not (choice.isdigit() and int(choice) > 0):
        raise ValueError(f"HIL_BLAS_THREADS={choice!r} is not a thread count: give a positive whole number, "
                         "or 'default' for the BLAS library's own choice")
    threads = int(choice or 1)
    for name in THREAD_ENV:  # read by a BLAS library when a child process loads it
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")  # the library this process has loaded already
    log.debug("BLAS limited to %d thread(s) per process", threads)
    return threads
