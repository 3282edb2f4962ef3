"""Drafters for speculative decoding: the protocol (``base.Drafter``) and its implementations,
registered by the ``kind`` a pack records (``accel.drafter.kind``)."""

from __future__ import annotations

from .base import Drafter
from .eagle_drafter import EagleDrafter
from .medusa import MedusaDrafter

__all__ = ["Drafter", "EagleDrafter", "MedusaDrafter", "DRAFTERS", "drafter_class"]

DRAFTERS: dict[str, type[Drafter]] = {MedusaDrafter.kind: MedusaDrafter, EagleDrafter.kind: EagleDrafter}


def drafter_class(kind: str) -> type[Drafter]:
    if kind not in DRAFTERS:
        raise ValueError(f"unknown drafter kind {kind!r} (this accel knows {sorted(DRAFTERS)}): upgrade accel")
    return DRAFTERS[kind]
