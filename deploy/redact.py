"""The redaction filter, seeded with every secret value, guarding every output surface.

One implementation serves both packages: it lives in smoke.secrets (smoke/ never imports
deploy/) and is re-exported here under the name deploy's modules use.
"""

from __future__ import annotations

from smoke.secrets import MASK as MASK
from smoke.secrets import Redactor as Redactor
