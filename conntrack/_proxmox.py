"""Proxmox VE: pve-firewall owns some nf_conntrack sysctls; warn where a change would be undone.

Private: :func:`conntrack.sysctl.is_proxmox` and the warnings of
:func:`conntrack.sysctl.set_max` / :func:`conntrack.sysctl.set_timeout` use it.
Nothing here writes Proxmox's files.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Optional

from ._limits import path as _path
from .errors import ProxmoxFirewallWarning

# pve-firewall writes these from the [OPTIONS] of /etc/pve/nodes/<node>/host.fw.
PVE_KEYS = ("nf_conntrack_max", "nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_syn_recv")


def is_proxmox(root: str = "/") -> bool:
    """True on a Proxmox VE host (it has /etc/pve)."""
    return os.path.isdir(_path(root, "etc/pve"))


def _pve_node(root: str) -> str:
    try:
        with open(_path(root, "etc/hostname")) as f:
            name = f.read().strip()
    except OSError:
        name = ""
    return (name or socket.gethostname()).split(".")[0]


def _pve_setting(path: str, key: str) -> Optional[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        k, sep, v = line.partition(":")
        if sep and k.strip() == key:
            return v.strip()
    return None


def warn(root: str, name: str, value: int) -> None:
    """Tell the user where Proxmox keeps this value; never touch Proxmox's files."""
    if not is_proxmox(root):
        return
    node = _pve_node(root)
    fw = "/etc/pve/nodes/%s/host.fw" % node
    current = _pve_setting(_path(root, fw.lstrip("/")), name)
    now = " (it now says %s: %s)" % (name, current) if current is not None else ""
    warnings.warn(ProxmoxFirewallWarning(
        "this is a Proxmox VE host: pve-firewall restores %s from its own configuration, undoing this "
        "change; set it as `%s: %d` in the [OPTIONS] section of %s%s (Datacenter > Node > Firewall > "
        "Options in the web UI)" % (name, name, value, fw, now)), stacklevel=3)

