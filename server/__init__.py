"""The payauth gRPC server: Authorize pipeline, issuer control, process model."""
