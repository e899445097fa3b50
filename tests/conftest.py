"""Test-wide settings.

Stages run with the strict recipe view: a stage that reads a recipe field its stage-table entry
does not declare fails (engine.stages.view.UndeclaredRead) instead of warning, here and in every
``recipe`` subprocess the tests start, so a missing declaration cannot ship.
"""

import os

from engine.stages.view import STRICT_ENV

os.environ[STRICT_ENV] = "1"
