"""`python -m semievol_jax` == the `semievol` console script."""

import sys

from semievol_jax.cli import main

sys.exit(main())
