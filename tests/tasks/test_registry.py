"""The task kinds are listed in three places that must agree: the config's task.kind choices, the
registry of kinds (training, models, tasks) and the table of their command-line modules."""
import typing

from ditlab.config import TaskConfig
from ditlab.tasks.commands import TASK_CLIS
from ditlab.tasks.registry import KINDS


def test_config_registry_and_cli_table_list_the_same_kinds():
    choices = set(typing.get_args(typing.get_type_hints(TaskConfig)["kind"]))
    assert choices == set(KINDS) == set(TASK_CLIS)
    for name, kind in KINDS.items():
        assert kind.name == name
        cli = TASK_CLIS[name]
        assert callable(cli.add_cli) and callable(cli.sample_conditions), name
