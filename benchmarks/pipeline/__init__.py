"""The Authorize pipeline without gRPC (see run.py)."""
