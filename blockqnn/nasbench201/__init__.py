"""``python -m blockqnn.nasbench201 convert SRC OUT.csv``: the benchmark's official result files (NAS-Bench-201,
NATS-Bench topology) as the CSV that ``space=nasbench201`` reads, so that no one depends on a hand-made export.

``official`` reads the released layouts without their APIs (neither is a dependency of this project); ``table``
chooses the columns, averages the seeds and writes the CSV; ``__main__`` is the command."""
