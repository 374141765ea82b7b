"""`python -m payauth.server` is the `payauth` command."""

import sys

from payauth.server.cli import main

sys.exit(main())
