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
"""
