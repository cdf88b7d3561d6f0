"""`make bench`: the vault against raw python-pkcs11 on the same token, in one run.

For each operation and each worker count N, N raw processes loop the PKCS#11 call on an
equivalent session key, and the real server with N worker processes is driven over gRPC by
load-generator processes; raw and vault measurements are interleaved (raw, vault, raw) so
that drift of this shared machine affects both alike. Only ratios from one run mean anything.
"""
