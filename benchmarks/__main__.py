import sys

from fastsrnn.bench import main

sys.exit(main())
