"""The base of every resource's inputs model: keys are camelCase (as a Pulumi program writes
them, and as they travel in state), and an unknown key is an error that names it rather than
a setting silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)
