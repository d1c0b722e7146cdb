"""`python -m training score` (placeholder until its issue lands)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("score: not implemented yet") or 1)
