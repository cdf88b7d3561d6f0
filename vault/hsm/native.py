"""The few PKCS#11 calls python-pkcs11 0.10.1 does not expose, made on the library it loaded.

ctypes.CDLL on the same path returns the handle the dynamic loader already holds, so these
calls act on the very module instance python-pkcs11 talks to (its state, sessions, login).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable, Mapping
from typing import Any

CKF_OS_LOCKING_OK = 0x00000002
CKR_OK = 0
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CK_ULONG = ctypes.c_ulong


class _InitializeArgs(ctypes.Structure):
    _fields_ = (
        ("create_mutex", ctypes.c_void_p),
        ("destroy_mutex", ctypes.c_void_p),
        ("lock_mutex", ctypes.c_void_p),
        ("unlock_mutex", ctypes.c_void_p),
        ("flags", CK_ULONG),
        ("reserved", ctypes.c_void_p),
    )


class _Attribute(ctypes.Structure):
    _fields_ = (("type", CK_ULONG), ("value", ctypes.c_void_p), ("value_len", CK_ULONG))


class NativeError(RuntimeError):
    """A PKCS#11 call made here returned an error code (the value is the CK_RV)."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} returned CK_RV 0x{rv:08x}")
        self.function = function
        self.rv = rv


def _check(function: str, rv: int) -> None:
    if rv != CKR_OK:
        raise NativeError(function, rv)


def reinitialize_with_os_locking(module_path: str) -> None:
    """Turn the module's internal locking back on.

    python-pkcs11 calls C_Initialize(NULL); SoftHSM then runs without locks and two threads
    crash it within seconds (double free). Finalising and initialising again with
    CKF_OS_LOCKING_OK on the same loaded module restores its mutexes. Must run right after
    pkcs11.lib() and before any session is opened: finalising drops every session.
    """
    module = ctypes.CDLL(module_path)
    finalized = module.C_Finalize(None)
    if finalized != CKR_CRYPTOKI_NOT_INITIALIZED:  # already down: a reset under us
        _check("C_Finalize", finalized)
    args = _InitializeArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
    _check("C_Initialize", module.C_Initialize(ctypes.byref(args)))


def init_token(module_path: str, slot_id: int, so_pin: bytes, label: str) -> None:
    """C_InitToken: python-pkcs11 has no binding for it. The PIN goes only to the module."""
    module = ctypes.CDLL(module_path)
    padded_label = label.encode("utf-8")[:32].ljust(32, b" ")
    pin = ctypes.create_string_buffer(so_pin, len(so_pin))
    _check(
        "C_InitToken",
        module.C_InitToken(CK_ULONG(slot_id), pin, CK_ULONG(len(so_pin)), padded_label),
    )
    ctypes.memset(pin, 0, len(so_pin))


class NestedTemplate:
    """A CK_ATTRIBUTE array as the value of UNWRAP_TEMPLATE or WRAP_TEMPLATE.

    python-pkcs11 copies the bytes a handler returns but not what they point to, so this object
    owns the value buffers; keep it referenced until the PKCS#11 call that uses it returns.
    """

    def __init__(self, attributes: Mapping[int, bool | int | bytes]) -> None:
        self._buffers: list[ctypes.Array[ctypes.c_char]] = []
        array = (_Attribute * len(attributes))()
        for index, (attribute_type, value) in enumerate(attributes.items()):
            raw = _pack_scalar(value)
            buffer = ctypes.create_string_buffer(raw, len(raw))
            self._buffers.append(buffer)
            array[index] = _Attribute(attribute_type, ctypes.addressof(buffer), len(raw))
        self._array = array
        self.packed = bytes(array)

    def __repr__(self) -> str:
        return f"NestedTemplate({len(self._buffers)} attributes)"


def _pack_scalar(value: bool | int | bytes) -> bytes:
    if isinstance(value, bool):
        return struct.pack("?", value)
    if isinstance(value, int):
        return struct.pack("L", value)
    return bytes(value)


def pack_nested_template(value: Any) -> bytes:
    if not isinstance(value, NestedTemplate):
        raise TypeError("template attributes take a NestedTemplate")
    return value.packed


def unpack_opaque(value: bytes) -> bytes:
    return bytes(value)


def pack_mechanism_list(mechanisms: Iterable[int]) -> bytes:
    return b"".join(struct.pack("L", int(mechanism)) for mechanism in mechanisms)


def unpack_mechanism_list(value: bytes) -> list[int]:
    size = struct.calcsize("L")
    return [struct.unpack_from("L", value, offset)[0] for offset in range(0, len(value), size)]


def read_attribute_array(
    module_path: str, session_handle: int, object_handle: int, attribute_type: int
) -> dict[int, bytes]:
    """An array attribute's contents (UNWRAP_TEMPLATE, WRAP_TEMPLATE) as {type: value bytes},
    in the token's order. python-pkcs11 reads only the outer array, whose entries point into
    buffers it never supplied; this does the three-step read PKCS#11 prescribes."""
    module = ctypes.CDLL(module_path)
    get = module.C_GetAttributeValue
    session, obj = CK_ULONG(session_handle), CK_ULONG(object_handle)
    outer = _Attribute(attribute_type, None, 0)
    _check("C_GetAttributeValue", get(session, obj, ctypes.byref(outer), CK_ULONG(1)))
    count = outer.value_len // ctypes.sizeof(_Attribute)
    if count == 0:
        return {}
    inner = (_Attribute * count)()
    outer.value = ctypes.cast(inner, ctypes.c_void_p)
    _check("C_GetAttributeValue", get(session, obj, ctypes.byref(outer), CK_ULONG(1)))
    buffers = []
    for entry in inner:
        buffer = ctypes.create_string_buffer(entry.value_len)
        buffers.append(buffer)
        entry.value = ctypes.addressof(buffer)
    _check("C_GetAttributeValue", get(session, obj, ctypes.byref(outer), CK_ULONG(1)))
    return {int(entry.type): buffer.raw for entry, buffer in zip(inner, buffers, strict=True)}
