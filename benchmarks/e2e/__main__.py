"""`python -m benchmarks.e2e`: the end-to-end benchmark with its command-line flags."""

from benchmarks.e2e.run import main

raise SystemExit(main())
