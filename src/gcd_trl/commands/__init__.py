"""Subcommands of the `gcd-trl` CLI. Each module defines `add_parser(subparsers)`."""
