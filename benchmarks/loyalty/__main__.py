"""`python -m benchmarks.loyalty`: the loyalty benchmark with its command-line flags."""

from benchmarks.loyalty.run import main

raise SystemExit(main())
