"""`python -m training calibrate` (placeholder until its issue lands)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("calibrate: not implemented yet") or 1)
