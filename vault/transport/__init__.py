"""The gRPC edge: the only package that imports grpc.

errors (the status table and interceptor), integrity (CRC32C fields), convert (messages <->
domain), key_servicer and crypto_servicer (thin servicers), server (bootstrap and workers).
"""
