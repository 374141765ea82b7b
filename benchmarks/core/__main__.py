"""`python -m benchmarks.core`: the decision-core benchmark with its command-line flags."""

from benchmarks.core.run import main

raise SystemExit(main())
