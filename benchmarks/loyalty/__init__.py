"""The loyalty benchmark: what a points program of 20 earning rules and 5 challenges costs an
Authorize, and how fast standalone `Loyalty.Earn` goes (`python -m benchmarks.loyalty`)."""
