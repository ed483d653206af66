"""Process managers behind one protocol (deploy.process.base.ProcessManager)."""

from __future__ import annotations

from deploy.inventory import Inventory
from deploy.model import Layout
from deploy.process.base import ProcessManager
from deploy.process.pm2 import Pm2


def manager_for(inventory: Inventory, layout: Layout) -> ProcessManager:
    # One manager today; systemd joins here behind the same protocol.
    return Pm2(inventory=inventory, layout=layout)


__all__ = ["ProcessManager", "manager_for"]
