"""README.md's `## Configuration` table documents every setting, and only real ones; so does
.env.example, whose values are valid settings.

The environment variable names of a setting come from its pydantic field: the aliases of
`validation_alias` (e.g. RECSVC_TRAIN_INTERVAL) when it has one, else the env prefix of
`Settings.model_config` plus the field name, upper-cased. A row may name several variables
separated by ` / ` (the row of RECSVC_MIN_USER_INTERACTIONS / RECSVC_MIN_ITEM_INTERACTIONS).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, AliasPath
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from recsvc.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
CODE = re.compile(r"`([^`]*)`")
# .env.example's RECSVC_* variables that only docker-compose.yml reads.
COMPOSE_ONLY = {"RECSVC_IMAGE"}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented_rows() -> list[tuple[list[str], str]]:
    """(variable names, default cell) of each row of README's configuration table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Configuration")
    rows: list[tuple[list[str], str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if cells[0] in ("variable", "") or set(cells[0]) <= set("-: "):
            continue  # header and separator rows
        names = [part.strip().strip("`") for part in cells[0].split(" / ")]
        rows.append((names, cells[1] if len(cells) > 1 else ""))
    return rows


def env_names(name: str, field: FieldInfo) -> set[str]:
    """Every environment variable that sets this field (upper-cased)."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return {alias.upper()}
    if isinstance(alias, AliasChoices):
        return {choice.upper() for choice in alias.choices if isinstance(choice, str)}
    if isinstance(alias, AliasPath):
        return {str(alias.path[0]).upper()}
    if field.alias:
        return {field.alias.upper()}
    return {f"{Settings.model_config.get('env_prefix', '')}{name}".upper()}


def settings_env_names() -> dict[str, set[str]]:
    return {name: env_names(name, field) for name, field in Settings.model_fields.items()}


def test_the_table_is_found() -> None:
    rows = documented_rows()
    assert len(rows) > 10, "README.md: no `## Configuration` table rows found"
    assert all(name.startswith("RECSVC_") for names, _ in rows for name in names), rows


def test_every_documented_variable_is_a_setting() -> None:
    known = set().union(*settings_env_names().values())
    documented = [name.upper() for names, _ in documented_rows() for name in names]
    unknown = sorted(set(documented) - known)
    assert not unknown, f"README.md documents variables that are no setting: {unknown}"
    repeated = sorted({name for name in documented if documented.count(name) > 1})
    assert not repeated, f"README.md documents these variables more than once: {repeated}"


def test_every_setting_is_documented() -> None:
    documented = {name.upper() for names, _ in documented_rows() for name in names}
    missing = sorted(
        " or ".join(sorted(names))
        for names in settings_env_names().values()
        if not names & documented
    )
    assert not missing, f"settings missing from README.md's configuration table: {missing}"


def _default_matches(default: object, text: str) -> bool:
    if isinstance(default, bool):
        return text.lower() == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(text) == float(default)
        except ValueError:
            return False
    if isinstance(default, Path):
        return Path(text) == default
    return text == str(default)


def _checked_defaults() -> list[tuple[str, object, str]]:
    """(variable, field default, documented default) where the cell is one plain value."""
    fields = Settings.model_fields
    by_env = {env: name for name, names in settings_env_names().items() for env in names}
    checked = []
    for names, cell in documented_rows():
        spans = CODE.findall(cell)
        if len(spans) != 1 or cell != f"`{spans[0]}`":
            continue  # "unset", "none", "see ...", or a default that depends on the command
        for env in names:
            field = fields.get(by_env.get(env.upper(), ""))
            if field is None or field.default in (PydanticUndefined, None):
                continue
            if not isinstance(field.default, str | int | float | bool | Path):
                continue
            checked.append((env, field.default, spans[0]))
    return checked


@pytest.mark.parametrize(("env", "default", "documented"), _checked_defaults())
def test_documented_default_is_the_real_one(env: str, default: object, documented: str) -> None:
    assert _default_matches(default, documented), (
        f"README.md says {env} defaults to {documented!r}; Settings says {default!r}"
    )


def test_env_example_names_only_settings() -> None:
    known = set().union(*settings_env_names().values()) | COMPOSE_ONLY
    named = re.findall(r"^#? ?(RECSVC_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M)
    assert named, ".env.example names no RECSVC_* variable"
    assert not sorted(set(named) - known), f"not settings: {sorted(set(named) - known)}"


def test_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("RECSVC_"):
            monkeypatch.delenv(name)
    settings = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.api_keys and all(len(scopes) > 0 for scopes in settings.api_keys.values())
    assert str(settings.models_dir) == "/data/models"
    settings.require_auth_configured()
