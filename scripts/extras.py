"""Print the requirements of the named optional-dependency groups of pyproject.toml, one per line
(for `pip install -r`), so that scripts/dev.sh installs them with its constraints before the build."""

import sys
from pathlib import Path

import tomllib

extras = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
    "optional-dependencies"
]
for name in sys.argv[1:]:
    print("\n".join(extras[name]))
