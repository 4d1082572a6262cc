"""Subcommands of the `omniroute` console script, one module each."""
