"""The end-to-end benchmark: payauth's Authorize and AuthorizeStream against an empty
handler on the same gRPC stack, open loop, HDR histograms (see README.md)."""
