"""Root-cause diagnosis: from the alerts (symptoms), the history and the model's
structure to a ranked list of :class:`Diagnosis` (causes), each with the remedies that fit
this model. See ``docs/architecture.md`` for where this stage sits.
"""

from gradwatch._diagnosis.diagnose import diagnose
from gradwatch._diagnosis.facts import ModelFacts
from gradwatch._diagnosis.record import CAUSES, Diagnosis, diagnoses_markdown

__all__ = ["CAUSES", "Diagnosis", "ModelFacts", "diagnose", "diagnoses_markdown"]
