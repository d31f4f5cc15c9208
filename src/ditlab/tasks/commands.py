"""The command-line module of every task kind: ``add_cli`` (its own subcommands) and
``sample_conditions`` (what ``ditlab sample`` conditions on). ``ditlab.cli`` reads this table and
nothing else task-specific; a new kind adds its ``cli`` module here."""
from __future__ import annotations

from types import ModuleType

from ditlab.tasks.icl import cli as icl_cli
from ditlab.tasks.image import cli as image_cli
from ditlab.tasks.lift import cli as lift_cli
from ditlab.tasks.scene import cli as scene_cli
from ditlab.tasks.superres import cli as superres_cli

TASK_CLIS: dict[str, ModuleType] = {"image": image_cli, "superres": superres_cli, "scene": scene_cli,
                                    "icl": icl_cli, "lift": lift_cli}
