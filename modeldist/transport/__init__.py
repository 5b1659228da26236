"""The data plane (DESIGN section 6): ``base`` (the one Transport interface and the registry),
``tcp`` (default and fallback), ``rdma`` (pyverbs RC queue pairs, the TCP session as side channel)."""
