"""`python -m benchmarks.grpc_stack`: the gRPC stack benchmark with its command-line flags."""

from benchmarks.grpc_stack.run import main

raise SystemExit(main())
