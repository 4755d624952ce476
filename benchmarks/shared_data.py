"""Where the benchmark scripts find the project's real image pairs (see ../shared/data/MANIFEST.md).

``$UPFUSION_SHARED/data`` when that variable is set (as for the tests), else ``../shared/data``
beside the repository.
"""

import os
from pathlib import Path

DATA = Path(os.environ.get("UPFUSION_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "data"
