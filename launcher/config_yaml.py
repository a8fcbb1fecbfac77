"""The YAML reader for configs and `key=value` overrides: PyYAML's safe loader minus YAML 1.1's
surprises (base-60 and octal numbers, yes/no booleans).

YAML 1.1 reads `24:00:00` or `1:30` as an integer in base 60 (86400, 90); `04:00:00` stays text
only because of its leading zero. Nobody writes seconds that way in a fine-tuning config, while
Slurm time limits (`cluster.slurm.time: 24:00:00`) are written exactly so: the user would get an
error about a number they never typed. YAML 1.2 dropped base-60; so do we.

YAML 1.1 also reads a leading zero as octal and `0b` as binary: `labels: [007, 010]` became the
numbers 7 and 8 (trial 49a), `seed: 010` became 8. Such a scalar stays the text as written: a
label keeps its name, and a number setting reads the text as the decimal it shows (pydantic reads
"010" as 10, YAML 1.2's meaning). So do hex (`0x1F`) and digits with underscores (`1_000`): a label
`0x1` or `1_0` keeps its name (trial 51a: they became '1' and '10'); a number setting reads `1_000`
as 1000 and refuses `0x1F`, asking for the decimal.

YAML 1.1 reads yes/no/on/off as booleans: `labels: [yes, no]` became [true, false] (trial 47b) and
`[Yes, No]` could not be quoted back as written (49a). They stay text, as in YAML 1.2; a switch
still reads them as on and off (pydantic takes "yes", "off", ... for a bool), and true/false stay
booleans. Everything else (ints, floats, nulls, dates) resolves as with yaml.safe_load.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"


class ConfigYamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader without base-60 ints and floats."""


ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# PyYAML's own patterns (yaml/resolver.py) with the `(?::[0-5]?[0-9])+` alternatives removed, and the
# octal (`0[0-7_]+`), binary (`0b[0-1_]+`), hex (`0x...`) and underscored ints (see the module's docstring).
ConfigYamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
ConfigYamlLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
    list("-+0123456789"),
)

ConfigYamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_config_yaml(text: str) -> Any:
    """Parse config text (a file, or one override's value)."""
    return yaml.load(text, Loader=ConfigYamlLoader)  # noqa: S506 - a SafeLoader subclass


def compose_config_yaml(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=ConfigYamlLoader)
