"""Teams: who sees which models. One file, ``conf/teams.yaml`` (``MHW_TEAMS`` names another), read
by every reader that restricts: Superset's provisioning (dashboards/provision.py: roles and
row-level security), ``mhw query --team`` (warehouse/query.py) and the Airflow users
(pipelines/airflow_local.py).

    teams:
      language:                       # a team: a slug
        models: [gpt2-*, llama-7b]    # the models it owns: names, or patterns with * and ?
        members: [alice]              # see the team's models; explore and save their own charts
        viewers: [carol]              # see the team's models; read-only
    viewers: [erin]                   # read-only, every model
    admins: [root]                    # everything: every model, the audit trail, SQL Lab

A team sees only rows whose ``model`` matches one of its patterns, and never a rolled-up row
(``model = 'ALL'``: a cube's fleet-level rows sum over every team's models). A user in two teams sees
both teams' models. Stdlib and PyYAML only: .venv-bi imports it into Superset.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEAMS = REPO_ROOT / "conf" / "teams.yaml"
# What a cube writes in the model column of a row rolled up over every model.
ROLLUP = "ALL"

_TEAM = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# A model pattern: the slug characters of warehouse/writer.py, plus * and ? as wildcards (the same in
# Python's fnmatch and DuckDB's GLOB; no [sets], which the two read differently).
_PATTERN = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._+*?-]{0,127}$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TeamsError(ValueError):
    """A teams file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Team:
    name: str
    models: tuple[str, ...]  # names or patterns (* and ?)
    members: tuple[str, ...]
    viewers: tuple[str, ...]

    def owns(self, model: str) -> bool:
        """Whether ``model`` is one of this team's (a rolled-up row is nobody's)."""
        return model != ROLLUP and any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def predicate(self, column: str = "model") -> str:
        """The SQL condition (DuckDB) true exactly for this team's rows: row-level security in
        Superset and ``mhw query --team`` use this one string."""
        return models_predicate(self.models, column)


def models_predicate(patterns, column: str = "model") -> str:
    """``column`` matches one of ``patterns`` and is not a rollup (``'ALL'``). Patterns are checked
    slugs (no quote can reach the SQL)."""
    names = sorted(p for p in patterns if "*" not in p and "?" not in p)
    globs = sorted(p for p in patterns if p not in names)
    terms = ([f"{column} in ({', '.join(_lit(n) for n in names)})"] if names else []) + \
        [f"{column} glob {_lit(g)}" for g in globs]
    if not terms:
        return "1 = 0"
    return f"({' or '.join(terms)}) and {column} <> {_lit(ROLLUP)}"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class Teams:
    path: str
    teams: dict[str, Team]
    viewers: tuple[str, ...]  # read-only on every model
    admins: tuple[str, ...]

    def team(self, name: str) -> Team:
        try:
            return self.teams[name]
        except KeyError:
            raise TeamsError(f"{self.path}: no team {name!r} (teams: {', '.join(sorted(self.teams)) or 'none'})") \
                from None

    def users(self) -> dict[str, dict]:
        """Every user the file names: ``{user: {"admin": bool, "viewer": bool (read-only),
        "teams": [names] (empty: every model)}}``."""
        out: dict[str, dict] = {}
        for u in self.admins:
            out[u] = {"admin": True, "viewer": False, "teams": []}
        for u in self.viewers:
            out.setdefault(u, {"admin": False, "viewer": True, "teams": []})
        for t in self.teams.values():
            for u in t.members:
                e = out.setdefault(u, {"admin": False, "viewer": False, "teams": []})
                e["teams"].append(t.name)
            for u in t.viewers:
                e = out.setdefault(u, {"admin": False, "viewer": True, "teams": []})
                e["teams"].append(t.name)
        return out


def path() -> Path:
    return Path(os.environ.get("MHW_TEAMS") or DEFAULT_TEAMS)


def load(where: str | os.PathLike | None = None) -> Teams:
    """The teams file, checked: every error names the file and the field."""
    p = Path(where) if where else path()
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise TeamsError(f"{p}: no teams file (copy conf/teams.yaml, or set MHW_TEAMS)") from None
    except yaml.YAMLError as e:
        raise TeamsError(f"{p}: not YAML: {e}") from None
    if not isinstance(raw, dict):
        raise TeamsError(f"{p}: the top level must be a mapping (teams, viewers, admins)")
    unknown = set(raw) - {"teams", "viewers", "admins"}
    if unknown:
        raise TeamsError(f"{p}: unknown key(s) {sorted(unknown)} (known: teams, viewers, admins)")
    teams_raw = raw.get("teams") or {}
    if not isinstance(teams_raw, dict):
        raise TeamsError(f"{p}: teams must be a mapping of team name to its models and members")
    teams = {}
    for name, body in teams_raw.items():
        where_ = f"{p}: teams.{name}"
        if not isinstance(name, str) or not _TEAM.match(name):
            raise TeamsError(f"{where_}: a team name is 1-63 lowercase letters, digits, - and _")
        if not isinstance(body, dict):
            raise TeamsError(f"{where_}: must be a mapping with models, members, viewers")
        extra = set(body) - {"models", "members", "viewers"}
        if extra:
            raise TeamsError(f"{where_}: unknown key(s) {sorted(extra)} (known: models, members, viewers)")
        models = _list(body.get("models"), f"{where_}.models", _PATTERN,
                       "a model name or pattern: letters, digits, . _ + - and the wildcards * ?")
        if not models:
            raise TeamsError(f"{where_}.models: a team owns at least one model (name or pattern)")
        members = _list(body.get("members"), f"{where_}.members", _USER, "a user name")
        viewers = _list(body.get("viewers"), f"{where_}.viewers", _USER, "a user name")
        both = sorted(set(members) & set(viewers))
        if both:
            raise TeamsError(f"{where_}: {both} listed as both members and viewers")
        teams[name] = Team(name, models, members, viewers)
    viewers = _list(raw.get("viewers"), f"{p}: viewers", _USER, "a user name")
    admins = _list(raw.get("admins"), f"{p}: admins", _USER, "a user name")
    in_teams = {u for t in teams.values() for u in (*t.members, *t.viewers)}
    for label, users in (("viewers", viewers), ("admins", admins)):
        clash = sorted(set(users) & in_teams)
        if clash:  # a team role would restrict them: say which access is meant
            raise TeamsError(f"{p}: {label} {clash} also belong to a team: list each user once "
                             f"(a team's users see its models only; {label} see every model)")
    clash = sorted(set(viewers) & set(admins))
    if clash:
        raise TeamsError(f"{p}: {clash} listed as both viewers and admins")
    return Teams(str(p), teams, viewers, admins)


def _list(value, where: str, pattern: re.Pattern, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list):
        raise TeamsError(f"{where}: must be a list (e.g. [a, b])")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not pattern.match(v):
            raise TeamsError(f"{where}[{i}]: {v!r} is not {what}")
        if v in out:
            raise TeamsError(f"{where}[{i}]: {v!r} is listed twice")
        out.append(v)
    return tuple(out)
