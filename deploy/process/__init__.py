"""Process managers behind one protocol (deploy.process.base.ProcessManager)."""

from __future__ import annotations

from deploy.inventory import Inventory
from deploy.model import Layout
from deploy.process.base import ProcessManager
from deploy.process.pm2 import Pm2
from deploy.process.systemd import Systemd


def manager_for(inventory: Inventory, layout: Layout) -> ProcessManager:
    if inventory.process.manager == "systemd":
        return Systemd(inventory=inventory, layout=layout)
    return Pm2(inventory=inventory, layout=layout)


__all__ = ["Pm2", "ProcessManager", "Systemd", "manager_for"]
