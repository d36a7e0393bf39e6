"""`python -m sam_cli`: the `sam-serve` command."""

import sys

from sam_cli.main import main

sys.exit(main())
