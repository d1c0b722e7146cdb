"""`python -m training evaluate` (placeholder until its issue lands)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("evaluate: not implemented yet") or 1)
