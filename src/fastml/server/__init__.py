"""Listeners: KServe v2 HTTP and gRPC, the binary protocol, metrics and admin endpoints (transport only; the
data plane lives in fastml.serving)."""
