"""The CIMI resource model: each family declared once in its own file, all of them registered in
registry.py."""

from .registry import FAMILIES, TYPES, collection_type, sub_collection
from .types import (ACTION_BASE, CIMI_NS, OWN_LOG, REF, TARGETING, Action, Attribute, Extension, Family,
                    ResourceType)

__all__ = ["ACTION_BASE", "CIMI_NS", "FAMILIES", "OWN_LOG", "REF", "TARGETING", "TYPES", "Action", "Attribute",
           "Extension", "Family", "ResourceType", "collection_type", "sub_collection"]
