"""The CIMI resource model: every type declared once (see resources.py)."""

from .resources import BY_COLLECTION, TYPES
from .types import ACTION_BASE, CIMI_NS, REF, Action, Attribute, ResourceType

__all__ = ["ACTION_BASE", "BY_COLLECTION", "CIMI_NS", "REF", "TYPES", "Action", "Attribute", "ResourceType"]
