# A stdout callback for scripts/test-ansible.sh: the play's results as one
# JSON document, shaped as ansible.posix's json callback (which ansible-core
# no longer ships): {"plays": [{"tasks": [{"task": {"name"}, "hosts":
# {HOST: RESULT}}]}], "stats": {HOST: {"ok", "failures", "unreachable",
# "ignored", ...}}}.

from __future__ import annotations

DOCUMENTATION = """
    name: results_json
    type: stdout
    short_description: the play's results as one JSON document (virtomate's tests)
    description: Prints every task's result per host, and the stats, as one JSON document at the end.
"""

import json
import time

from ansible.parsing.ajson import AnsibleJSONEncoder
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'results_json'

    def __init__(self):
        super().__init__()
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({'play': {'name': play.get_name()}, 'tasks': []})

    def _task(self, task):
        tasks = self.plays[-1]['tasks']
        if not tasks or tasks[-1]['task']['id'] != str(task._uuid):
            tasks.append({'task': {'name': task.get_name(), 'id': str(task._uuid)}, 'hosts': {},
                          'started': time.monotonic()})
        return tasks[-1]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task(task)

    def _record(self, result, **flags):
        entry = dict(result._result)
        entry.update(flags)
        task = self._task(result._task)
        # Seconds from the task's start to this host's result.
        entry['_duration'] = round(time.monotonic() - task['started'], 4)
        task['hosts'][result._host.get_name()] = entry

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        summary = {h: stats.summarize(h) for h in sorted(stats.processed.keys())}
        self._display.display(json.dumps({'plays': self.plays, 'stats': summary}, cls=AnsibleJSONEncoder,
                                         indent=1, sort_keys=True))
