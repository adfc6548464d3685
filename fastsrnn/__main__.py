import sys

from fastsrnn.cli import main

sys.exit(main())
