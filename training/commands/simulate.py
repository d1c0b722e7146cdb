"""`python -m training simulate` (placeholder until its issue lands)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("simulate: not implemented yet") or 1)
