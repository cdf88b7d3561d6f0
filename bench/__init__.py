"""`make bench`: the vault against raw python-pkcs11 on the same token, in one run.

For each operation and each worker count N, N raw processes loop the PKCS#11 call on an
equivalent session key, and real servers with N worker processes are driven over gRPC by
load-generator processes, on two paths:

- authenticated: the default settings, so every call is signed by the load generator (with
  the admin access key the vault bootstrapped) and authenticated, authorised and audited by
  the server;
- unauthenticated: a second server on the same data directory with VAULT_AUTH__ENABLED=false
  (accepted on loopback only): no authentication, authorisation or audit.

Raw and vault measurements are interleaved (raw, authenticated, raw, unauthenticated, raw)
so that drift of this shared machine affects all of them alike: each path's ratio to raw uses
the raw measurements right around it, and the authenticated path is also reported against the
unauthenticated one. Only ratios from one run mean anything.

The floor (--floor, on by default; bench/floor.py): per worker count, bare Python gRPC servers
with no vault code, served as the vault is (N processes on one port) and driven by the same
load generators: a sync grpcio server with the vault's request threads and a grpc.aio server,
each once as an echo (gRPC's own CPU per call) and once signing with RSA-2048 PSS on the same
token per call. The signing servers are measured among RSA-2048 signing's paths, with raw
before and after like the vault's; their ratio to raw is the most a Python gRPC server reaches
on this machine, and the ceiling table puts the vault's ratios and the 0.85/0.80 targets next
to it. results.json holds their rows under the paths grpc-floor-sync, grpc-floor-aio (op
grpc_echo, no raw figures) and grpc-rsa-sync, grpc-rsa-aio.

The bucket workload (--buckets, on by default; bench/buckets.py), after the operations: small
objects encrypted through the SDK under bucket keys against one GenerateDataKey per object, on
an authenticated server with the largest worker count. Its row (op "bucket object encrypt")
carries the vault calls each path made, as counted by the client and by the audit log, the
reduction, both paths' objects per second and the SDK's 1 MiB throughput against AES-GCM.
"""
