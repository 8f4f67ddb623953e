"""``python -m fedfm.datasets.instruct_counts``: the offline instruction benchmark's examples
per task and split (:func:`fedfm.datasets.instruct.main`).

A module of its own: the package imports :mod:`fedfm.datasets.instruct` (to register its
datasets) before ``python -m`` could run that file as ``__main__``, which made Python warn
that it runs a second copy.
"""

from fedfm.datasets.instruct import main

if __name__ == "__main__":
    main()
