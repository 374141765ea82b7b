"""What one Redis shard spends per authorization (read pipeline + commit), alone on its core."""
