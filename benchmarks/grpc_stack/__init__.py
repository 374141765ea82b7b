"""The gRPC stack alone: an empty grpc.aio handler's CPU per call under gRPC core settings."""
