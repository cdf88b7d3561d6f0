"""`vaultctl`: the vault's command line for operators (serve, token) and callers (keys, crypto).

One module per command group; `main.main` is the console entry point.
"""
