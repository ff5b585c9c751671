"""Access to ``aioice.stun`` without importing all of aioice.

``import aioice.stun`` runs ``aioice/__init__``, which imports the ICE agent,
mDNS and dnspython: about 100 ms that ``natkit probe`` must not pay (startup
time is part of the product). ``aioice.stun`` itself only needs the standard
library and ``aioice.utils``, so this module loads it under its real name with
the package entry left unexecuted, then removes that placeholder so that a
later ``import aioice`` (aiortc does one) runs the real ``__init__`` and finds
the already loaded ``aioice.stun`` in ``sys.modules``.

It also registers the attributes aioice lacks: PADDING (0x0026) and
RESPONSE-PORT (0x0027) of RFC 5780, REQUESTED-ADDRESS-FAMILY (0x0017) of
RFC 8656 and CONNECTION-ID (0x002A) of RFC 6062. This is the only place natkit
touches aioice's attribute table.
"""

from __future__ import annotations

import importlib
import importlib.util
import struct
import sys


def _load_stun():
    if "aioice.stun" in sys.modules:
        return sys.modules["aioice.stun"]
    if "aioice" in sys.modules:  # the real package is already imported
        return importlib.import_module("aioice.stun")
    spec = importlib.util.find_spec("aioice")
    if spec is None or not spec.submodule_search_locations:
        return importlib.import_module("aioice.stun")
    placeholder = importlib.util.module_from_spec(spec)
    sys.modules["aioice"] = placeholder
    try:
        module = importlib.import_module("aioice.stun")
        utils = sys.modules.get("aioice.utils")
    finally:
        # let a later "import aioice" execute the real package
        if sys.modules.get("aioice") is placeholder:
            del sys.modules["aioice"]
    sys.meta_path.insert(0, _ReattachFinder(module, utils))
    return module


class _ReattachFinder:
    """Once the real ``aioice`` package is imported, set its ``stun`` and
    ``utils`` attributes (the import system only does that for submodules it
    loads itself), then step out of the way."""

    def __init__(self, stun_module, utils_module) -> None:
        self._mods = {"stun": stun_module, "utils": utils_module}

    def find_spec(self, name, path=None, target=None):
        if name.startswith("aioice.") and "aioice" in sys.modules:
            pkg = sys.modules["aioice"]
            for attr, mod in self._mods.items():
                if mod is not None and not hasattr(pkg, attr):
                    setattr(pkg, attr, mod)
        return None


stun = _load_stun()


def _pack_response_port(value: int) -> bytes:
    return struct.pack("!HH", value, 0)


def _unpack_response_port(data: bytes) -> int:
    if len(data) < 2:
        raise ValueError("STUN RESPONSE-PORT attribute is too short")
    return struct.unpack("!H", data[:2])[0]


def _register(attr_type: int, name: str, pack, unpack) -> None:
    if attr_type in stun.ATTRIBUTES_BY_TYPE:
        return
    entry = (attr_type, name, pack, unpack)
    stun.ATTRIBUTES.append(entry)
    stun.ATTRIBUTES_BY_TYPE[attr_type] = entry
    stun.ATTRIBUTES_BY_NAME[name] = entry


def _pack_family(value: int) -> bytes:
    return struct.pack("!B3x", value)


def _unpack_family(data: bytes) -> int:
    if len(data) < 1:
        raise ValueError("STUN REQUESTED-ADDRESS-FAMILY attribute is too short")
    return data[0]


_register(0x0026, "PADDING", stun.pack_bytes, stun.unpack_bytes)  # RFC 5780 §7.6
_register(0x0027, "RESPONSE-PORT", _pack_response_port, _unpack_response_port)  # RFC 5780 §7.5
_register(0x0017, "REQUESTED-ADDRESS-FAMILY", _pack_family, _unpack_family)  # RFC 8656 §18.13
_register(0x002A, "CONNECTION-ID", stun.pack_unsigned, stun.unpack_unsigned)  # RFC 6062 §6.2.1

Message = stun.Message
Method = stun.Method
Class = stun.Class
parse_message = stun.parse_message
HEADER_LENGTH = stun.HEADER_LENGTH
