"""The connection's option definitions as Ansible would parse them from its
DOCUMENTATION (YAML, with the connection_pipelining fragment) are the ones
plugins/plugin_utils/connection_options.json hands it ahead, and loading the
plugin parses no YAML.

Run: python3 tests/unit/plugins/connection/test_options.py (from the
collection, with ansible-core installed), or through scripts/test-ansible.sh.
After a change to DOCUMENTATION, make the file again with
``python3 tests/unit/plugins/connection/test_options.py --write``.
"""

import ast
import hashlib
import json
import os
import sys
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRIB = os.path.abspath(os.path.join(HERE, *(['..'] * 7)))
PLUGINS = os.path.join(CONTRIB, 'ansible_collections', 'virtomate', 'guest', 'plugins')
PLUGIN = os.path.join(PLUGINS, 'connection', 'virtomate.py')
OPTIONS = os.path.join(PLUGINS, 'plugin_utils', 'connection_options.json')

import yaml  # noqa: E402
from ansible import constants as C  # noqa: E402
from ansible.plugins import loader  # noqa: E402
from ansible.plugins.loader import connection_loader, fragment_loader  # noqa: E402
from ansible.playbook.play_context import PlayContext  # noqa: E402
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: E402
from ansible.utils.plugin_docs import add_fragments  # noqa: E402

_AnsibleCollectionFinder(paths=[CONTRIB])._install()


def documentation():
    """The plugin's DOCUMENTATION string, read as ansible-doc reads it (no import)."""
    with open(PLUGIN) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['DOCUMENTATION']:
            return node.value.value
    raise AssertionError('no DOCUMENTATION in %s' % PLUGIN)


def parsed_options(doc):
    """The options as Ansible's plugin loader makes them (_load_config_defs)."""
    parsed = yaml.load(doc, Loader=loader.AnsibleLoader)
    add_fragments(parsed, PLUGIN, fragment_loader=fragment_loader, is_module=False)
    # Through JSON: plain types, as the file gives them.
    return json.loads(json.dumps(parsed['options']))


def digest(doc):
    """As the plugin computes it (_documentation_digest), written out here."""
    from ansible.plugins.doc_fragments.connection_pipelining import ModuleDocFragment

    return hashlib.sha256(('%s\0%s' % (doc, ModuleDocFragment.DOCUMENTATION)).encode('utf-8')).hexdigest()


def expected_file(doc):
    return {'documentation_sha256': digest(doc), 'options': parsed_options(doc)}


class OptionsTest(unittest.TestCase):

    def test_the_file_holds_what_ansible_would_parse(self):
        with open(OPTIONS) as f:
            have = json.load(f)
        self.assertEqual(have, expected_file(documentation()),
                         'stale %s: run %s --write' % (OPTIONS, os.path.relpath(__file__)))

    def test_loading_the_plugin_parses_no_yaml(self):
        # Ansible keeps the definitions by the module's name.
        name = 'ansible_collections.virtomate.guest.plugins.connection.virtomate'
        self.assertFalse(C.config.has_configuration_definition('connection', name))
        parsed = []
        real_load = yaml.load

        def load(stream, Loader):
            # This plugin's (the sh shell plugin's is parsed as ever).
            if Loader is loader.AnsibleLoader and str(stream) == documentation():
                parsed.append(stream)
            return real_load(stream, Loader=Loader)

        with mock.patch.object(loader.yaml, 'load', load):
            conn = connection_loader.get('virtomate.guest.virtomate', PlayContext())
        self.assertEqual(parsed, [])
        with open(OPTIONS) as f:
            self.assertEqual(C.config.get_configuration_definitions('connection', name), json.load(f)['options'])
        conn.set_options(direct={'domain': 'vm1'})
        self.assertEqual((conn.get_option('domain'), conn.get_option('persist_seconds'),
                          conn.get_option('pipelining')), ('vm1', 60, False))


if __name__ == '__main__':
    if sys.argv[1:] == ['--write']:
        with open(OPTIONS, 'w') as f:
            json.dump(expected_file(documentation()), f, indent=1, sort_keys=True)
            f.write('\n')
        print('wrote', OPTIONS)
    else:
        unittest.main()
