"""The blocking checks every built version must pass before it is published.

Each check is declared by the output it checks (brightrun_pipeline.outputs); this runs every
registered check once on a built version, through a `CheckContext` that reads the objects back
(streamed, through the same retry layer that wrote them) and shares work between checks that
need the same pass.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from brightrun_pipeline.members import MemberRecord
from brightrun_pipeline.outputs import BY_NAME, CHECKS, Output
from brightrun_pipeline.outputs.base import CheckOutcome
from brightrun_pipeline.retry import RetryingStore
from brightrun_pipeline.storage import ObjectStore

if TYPE_CHECKING:
    from brightrun_pipeline.builder import BuiltVersion
    from brightrun_pipeline.service import Pipeline

__all__ = ["CheckContext", "CheckOutcome", "verify_built_version"]


class CheckContext:
    """A built version as its checks see it."""

    def __init__(self, pipeline: Pipeline, built: BuiltVersion) -> None:
        self.pipeline = pipeline
        self.built = built
        self.store: ObjectStore = RetryingStore(pipeline.store, pipeline.retry)
        self.bucket = pipeline.training_bucket
        self._done: dict[str, Any] = {}

    @cached_property
    def outputs(self) -> tuple[Output, ...]:
        """The registered outputs the version has, in registry order."""
        return tuple(BY_NAME[name] for name in self.built.objects)

    def previous_members(self) -> list[MemberRecord]:
        """The previous version's conversations in file order (the database's view)."""
        spec = self.built.spec
        return self.once("previous_members", lambda: list(
            self.pipeline.db.iter_members(spec.training_file_id))
            if spec.previous is not None else [])

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, worked out once per version for every check that asks."""
        if key not in self._done:
            self._done[key] = compute()
        return self._done[key]


def verify_built_version(pipeline: Pipeline, built: BuiltVersion) -> dict[str, CheckOutcome]:
    """Run every registered check on a built version's objects."""
    context = CheckContext(pipeline, built)
    return {check.name: check.run(context) for check in CHECKS}
