"""`python -m benchmarks.redis_shard`: the Redis shard benchmark with its command-line flags."""

from benchmarks.redis_shard.run import main

raise SystemExit(main())
