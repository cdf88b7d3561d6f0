"""`vaultctl`: the vault's command line for operators (serve, token) and callers (keys, crypto).

One module per command group; `launch.main` is the console entry point (it checks the
`server` extra is installed, then runs `main.main`).
"""
