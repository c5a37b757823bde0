"""The `megane` commands, one module per command group; `crawler.cli` parses and dispatches."""
