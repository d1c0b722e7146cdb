"""One module per CLI subcommand. Each exposes `register(subparsers)`, which adds its parser
and sets `func` to a callable taking the parsed args and returning an exit code."""

COMMANDS = ["serve", "simulate", "fit", "calibrate", "retune", "evaluate", "score", "bench"]
