"""`python -m vault.cli`: the same as `vaultctl`, for an environment without the entry point."""

from vault.cli.launch import main

main()
