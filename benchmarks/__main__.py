import sys

from fastsrnn.tools.bench import main

sys.exit(main())
