"""Text from users (file names, paths) made safe for one line of a log."""

_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85]}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def printable(text: object) -> str:
    """`text` with its control characters and line breaks written as escapes (a newline as
    the two characters backslash and n), so a file name cannot start a forged log line or
    send a terminal escape sequence."""
    return str(text).translate(_ESCAPES)
