"""The `smoke:` section of an inventory. Lives in smoke/ (which never imports deploy/), so the
smoke pack stays usable on its own; deploy.inventory embeds it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditSettings(_Strict):
    """The built-in readiness audit pack (paths configurable)."""

    enabled: bool = False


class SmokeSettings(_Strict):
    # Pack files, relative to the inventory's directory; run after readiness and identity.
    packs: tuple[str, ...] = ()
    # When set, the gate and `smoke ENV` use this URL instead of an SSH tunnel to the app port.
    base_url: str | None = None
    concurrency: int = Field(4, ge=1, le=64)
    audit: AuditSettings = AuditSettings()
