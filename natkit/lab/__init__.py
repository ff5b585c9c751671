"""natkit's network-scenario lab: real NATs in Linux network namespaces.

- :mod:`natkit.lab.spec`: declarative specs and the pure rendering of
  namespaces, addresses and nftables rules (no I/O);
- :mod:`natkit.lab.netns`: building and removing namespaces (iproute2, nft);
- :mod:`natkit.lab.lab`: :class:`NatLab`, a running lab as a context manager;
- :mod:`natkit.lab.peers`: agent processes inside the namespaces, WebRTC
  attempts between two hosts (:class:`PairResult`);
- :mod:`natkit.lab.matrix`: the behaviour x behaviour outcome matrix, for
  several kinds of ICE agent (:func:`run_comparison`);
- :mod:`natkit.lab.browser`: Chromium inside host namespaces (matrix agent,
  media calls, pages for the pytest plugin); :mod:`natkit.lab.firefox`:
  Firefox ESR over WebDriver BiDi.

Imports are lazy: ``import natkit.lab`` costs nothing.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "LabSpec": "natkit.lab.spec",
    "NatSpec": "natkit.lab.spec",
    "HostSpec": "natkit.lab.spec",
    "ServerSpec": "natkit.lab.spec",
    "load_spec": "natkit.lab.spec",
    "plan": "natkit.lab.spec",
    "render_nat_ruleset": "natkit.lab.spec",
    "expected_outcome": "natkit.lab.spec",
    "NatLab": "natkit.lab.lab",
    "HostCheck": "natkit.lab.lab",
    "LabVerificationFailed": "natkit.lab.lab",
    "LabError": "natkit.lab.netns",
    "down_all": "natkit.lab.netns",
    "PairResult": "natkit.lab.peers",
    "connect_pair": "natkit.lab.peers",
    "run_matrix": "natkit.lab.matrix",
    "MatrixReport": "natkit.lab.matrix",
    "run_comparison": "natkit.lab.matrix",
    "BrowserSession": "natkit.lab.browser",
    "media_call": "natkit.lab.browser",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'natkit.lab' has no attribute {name!r}")


__all__ = sorted(_LAZY)
