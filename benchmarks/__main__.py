"""``python -m benchmarks`` = ``fastsrnn bench`` (same arguments)."""
import sys

from fastsrnn.tools.bench import main

sys.exit(main())
