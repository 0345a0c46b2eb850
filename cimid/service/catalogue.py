"""The catalogue (configurations, templates, credentials): stored resources that touch only SQLite and
answer at once (201/200), each with a finished Job. The generic service does all of it; this family adds
the sandbox's seed and its capabilities."""

from __future__ import annotations

from ..model import ResourceType
from ..model.catalogue import Credential
from .resources import ResourceService
from .seed import seed_catalogue


class Catalogue(ResourceService):
    async def start(self) -> None:
        if self.config["catalogue"]["seed"]:
            await seed_catalogue(self.store)

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        return {"CredentialTemplateByValue": True} if rtype is Credential else {}
