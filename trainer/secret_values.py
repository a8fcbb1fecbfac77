"""Secrets never go into a config. config.yaml is what every worker reads, it stays in the run
directory, travels with Ray Jobs and is printed by `ftl validate`; and no config key holds a secret
(unknown keys are refused, and none of the schema's keys is one). So a value that looks like a
secret is a mistake: load_config refuses it, naming the key but never the value, and says where
secrets go instead: the environment (HF_TOKEN, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...),
which every backend passes on to the workers.

`redact` and `redact_argv` hide secrets in what is shown to people, by exact key names (a key
whose words include "token", "password", "secret", "api key", ...; "tokenizer" is not one).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***redacted***"
# Tokens with a recognisable shape: Hugging Face, OpenAI-style, GitHub, AWS access key ids, Slack,
# a JSON Web Token and an HTTP `Bearer ...` credential (trial 50a: a tag `auth: Bearer eyJ...` passed).
TOKEN_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|"
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*|[Bb]earer\s+[A-Za-z0-9._~+/=-]{8,})"
)
# scheme://user:password@host — a password in a URI's userinfo (abfss://container@account has none).
URI_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@\s]*:[^/?#@\s]*)@")
# NAME=value inside a string (a shell line in cluster.slurm.setup, an --export in extra_sbatch).
ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)=([^\s,;]+)")
SECRET_WORDS = {"token", "secret", "password", "passwd", "apikey", "credential", "credentials", "auth", "authorization"}
SECRET_PAIRS = {
    ("api", "key"),
    ("access", "key"),
    ("private", "key"),
    ("secret", "key"),
    ("auth", "token"),
    ("account", "key"),  # AZURE_STORAGE_ACCOUNT_KEY
    ("connection", "string"),  # AZURE_STORAGE_CONNECTION_STRING (holds the account key)
}
ENV_HINT = (
    "put it in the environment instead (HF_TOKEN for the Hugging Face hub; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "GOOGLE_APPLICATION_CREDENTIALS or AZURE_STORAGE_* for object storage; MLFLOW_TRACKING_USERNAME/"
    "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN for MLflow): ftl passes them to the workers on every "
    "backend and never writes them to the run directory"
)


def is_secret_name(name: str) -> bool:
    """True for HF_TOKEN, hub_token, api_key, apiKey, AWS_SECRET_ACCESS_KEY, db_password; not for
    tokenizer, max_tokens or TOKENIZERS_PARALLELISM."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if w]
    return any(w in SECRET_WORDS for w in words) or any(pair in SECRET_PAIRS for pair in zip(words, words[1:]))


def secret_problems(raw: Any, path: str = "") -> list[str]:
    """One line per config value that looks like a secret, naming the key, never the value."""
    if isinstance(raw, dict):
        return [p for key, value in raw.items() for p in secret_problems(value, f"{path}.{key}" if path else str(key))]
    if isinstance(raw, list):
        return [p for index, value in enumerate(raw) for p in secret_problems(value, f"{path}[{index}]")]
    if not isinstance(raw, str):
        return []
    # A free-form mapping's secret-named key (tracking.mlflow.tags: {api_key: ...}): no schema key
    # has such a name, so its value is a secret whatever it looks like; it was sent as an MLflow
    # tag and kept in config.yaml (only token-shaped values were refused).
    key = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
    if raw.strip() and not raw.startswith("$") and is_secret_name(key):
        return [f"{path}: a secret-named key with a literal value; secrets do not belong in a config: {ENV_HINT}"]
    uri = URI_PASSWORD.search(raw)
    if uri:
        return [
            f"{path}: the URI carries a user name and password ({strip_userinfo(raw.split('?', 1)[0])} shown without them); "
            f"credentials do not belong in a config: write the URI without 'user:password@' and {ENV_HINT}"
        ]
    if TOKEN_VALUE.search(raw):
        return [f"{path}: holds what looks like an access token; tokens do not belong in a config: {ENV_HINT}"]
    named = [name for name, value in ASSIGNMENT.findall(raw) if is_secret_name(name) and not value.startswith("$")]
    if named and "://" in raw:
        return [
            f"{path}: the URI's options carry credentials ({', '.join(named)}); credentials do not belong in a config: "
            f"write the URI without them and {ENV_HINT}"
        ]
    if named and path.startswith("cluster.slurm."):  # a shell line: the job's shell expands $NAME
        return [
            f"{path}: sets {', '.join(named)} to a literal value; secrets do not belong in a config: export "
            f"{named[0]} in the shell that runs ftl instead (a Slurm job inherits the environment it is submitted from), "
            f"and write ${named[0]} where the config needs it"
        ]
    if named:  # elsewhere nothing expands $NAME (trial 50a: a tag would have held the text `$token`)
        return [f"{path}: sets {', '.join(named)} to a literal value; secrets do not belong in a config: {ENV_HINT}"]
    return []


def strip_userinfo(text: str) -> str:
    """The text with every URI's user:password@ replaced by ***@."""
    return URI_PASSWORD.sub(lambda m: m.group(0).replace(m.group(1), "***"), text)


def redact_text(text: str) -> str:
    """Free text (an error message from a library) fit to show: URI passwords and token-shaped words hidden."""
    return TOKEN_VALUE.sub(REDACTED, strip_userinfo(text))


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config-like value fit to show: values of secret-named keys and secret-looking
    strings replaced by ***redacted***, URI passwords by ***."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if (key and is_secret_name(key)) or TOKEN_VALUE.search(value):
            return REDACTED
        return strip_userinfo(value)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """A command line fit to record: `key.path=SECRET` overrides and --secret-flag values hidden."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        name, sep, value = arg.partition("=")
        if hide_next or TOKEN_VALUE.search(arg):
            shown.append(REDACTED if not sep else f"{name}={REDACTED}")
        elif sep and is_secret_name(name.rsplit(".", 1)[-1].lstrip("-")):
            shown.append(f"{name}={REDACTED}")
        elif sep and value.startswith("{") and _names_a_secret_inside(value):
            shown.append(f"{name}={REDACTED}")  # training={..., api_key: x}: the section's keys hold the secret
        else:
            shown.append(strip_userinfo(arg))
        hide_next = arg.startswith("--") and not sep and is_secret_name(arg.lstrip("-"))
    return shown


def _names_a_secret_inside(value: str) -> bool:
    """Whether a `{key: value, ...}` override names a secret key at any depth."""
    return any(is_secret_name(name) for name in re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*)\s*:", value))
