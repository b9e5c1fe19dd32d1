"""`python -m cityclf`: the same command line as the `cityclf` script."""
import sys

from .cli import main

sys.exit(main())
