"""`python -m bridge.ws [DOC]`: rewrite the JSON Schema blocks of DOC (docs/ws-protocol.md)
from the protocol's models, or print the schemas without DOC."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bridge.ws.schemas import json_schemas, render_doc


def main(argv: list[str]) -> int:
    if not argv:
        print(json.dumps(json_schemas(), indent=2, sort_keys=True))
        return 0
    path = Path(argv[0])
    path.write_text(render_doc(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
