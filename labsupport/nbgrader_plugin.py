"""nbgrader preprocessor used by the course's nbgrader configuration (imports nbgrader, so it is
only loaded by nbgrader itself; see ``labsupport nbgrader setup``)."""

from __future__ import annotations

from nbgrader.preprocessors import NbGraderPreprocessor

from .course import INSTRUCTOR_TAG


class DropInstructorCells(NbGraderPreprocessor):
    """Leave out cells tagged ``instructor`` (assertions on the full-profile numbers that CI runs),
    so ``generate_assignment`` releases exactly the notebooks in ``labs/``."""

    def preprocess(self, nb, resources):
        nb.cells = [c for c in nb.cells if INSTRUCTOR_TAG not in c.metadata.get("tags", [])]
        return nb, resources


def release_preprocessors() -> list[type]:
    """nbgrader's default ``GenerateAssignment`` preprocessors with :class:`DropInstructorCells` first."""
    from nbgrader.converters import GenerateAssignment

    return [DropInstructorCells, *GenerateAssignment.class_traits()["preprocessors"].make_dynamic_default()]
