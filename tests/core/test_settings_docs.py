"""docs/configuration.md and conf/coapbridge.yaml are the schema's: generated from
bridge/settings and the payload formats' keys (``make docs``), so the defaults live in the
dataclasses only."""

import os

import yaml

from bridge.cli_config import format_keys
from bridge.settings import SETTINGS, Config, describe, load_text

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
FIX = "run `make docs` (coapbridge config doc > docs/configuration.md; coapbridge config " \
      "example > conf/coapbridge.yaml) and commit the result"


def read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as handle:
        return handle.read()


def test_the_configuration_doc_is_the_schema_s():
    # the doc `coapbridge config doc` prints: the settings', with each payload format's keys
    assert read("docs", "configuration.md") == describe.markdown(format_keys()), FIX


def test_the_shipped_file_is_the_schema_s_and_sets_nothing():
    text = read("conf", "coapbridge.yaml")
    assert text == describe.example(), FIX
    assert load_text(text, {}) == Config()
    raw = yaml.safe_load(text)  # only the section headings are uncommented
    assert all(value is None or (isinstance(value, dict) and
                                 all(v is None for v in value.values()))
               for value in raw.values()), raw


def test_the_doc_lists_every_setting_with_its_variables_default_and_meaning():
    doc = describe.markdown(format_keys())
    for s in SETTINGS.values():
        row = [line for line in doc.splitlines() if line.startswith("| `%s` |" % s.path)]
        assert len(row) == 1, s.path
        for name in s.names + s.rule.deprecated:
            assert "`%s`" % name in row[0]
        assert s.meaning.replace("|", "\\|") in row[0]
