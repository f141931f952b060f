"""The `targetclip` command line: one module per command family, all registering the same way."""
