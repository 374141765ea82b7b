"""`python -m benchmarks.pipeline`: the pipeline benchmark with its command-line flags."""

from benchmarks.pipeline.run import main

raise SystemExit(main())
