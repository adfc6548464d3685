"""fastsrnn benchmarks: pytest-benchmark suites (``pytest benchmarks``) and the table runner
(``python -m benchmarks`` = ``fastsrnn bench``)."""
