"""`python -m gpu_watch`: the same as the `gpu-watch` command."""

import sys

from gpu_watch.cli import main

sys.exit(main())
