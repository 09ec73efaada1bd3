"""`python -m mnist_jax.data fetch|verify|info NAME`."""

import sys

from mnist_jax.data import main

sys.exit(main())
