"""python -m rajax.demo: see rajax.demo."""

import sys

from rajax.demo import main

sys.exit(main())
