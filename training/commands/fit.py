"""`python -m training fit` (placeholder until its issue lands)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("fit: not implemented yet") or 1)
