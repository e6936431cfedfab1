"""Progress artifacts: the Prefect UI shows how far a long `reproduce-all` run is (stores extracted, classes
trained), updated as each unit ends. Outside a flow run (a step called directly) there is no artifact to update."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

__all__ = ["Progress"]


@dataclass
class Progress:
    """One progress artifact of `total` units; `step()` after each unit. Small and picklable (a subflow gets it)."""

    artifact_id: str | None
    total: int
    what: str
    done: int = 0

    @classmethod
    def start(cls, key: str, total: int, what: str) -> Progress:
        """A new artifact at 0 % (key: lowercase letters, digits and dashes, as Prefect asks)."""
        if FlowRunContext.get() is None:
            return cls(None, total, what)
        artifact_id = create_progress_artifact(0.0, key=key, description=f"{what}: 0 of {total}")
        return cls(str(artifact_id), total, what)

    def step(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.artifact_id is None:
            return
        percent = 100.0 * self.done / self.total if self.total else 100.0
        update_progress_artifact(
            UUID(self.artifact_id), percent, description=f"{self.what}: {self.done} of {self.total}"
        )
