"""How the `marport` command names itself in the hints it prints."""

from __future__ import annotations

import sys
from pathlib import Path


def typed() -> str:
    """How to type this command again: `marport` where PATH finds this very one, else its path (`make serve`
    runs .venv/bin/marport, which PATH does not have), else `python -m marport` with this Python."""
    import shlex
    import shutil

    script = Path(sys.argv[0])
    if script.name != "marport":
        return f"{shlex.quote(sys.executable)} -m marport"
    found = shutil.which("marport")
    if found and Path(found).resolve() == script.resolve():
        return "marport"
    try:
        return shlex.quote(str(script.resolve().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script.resolve()))
