"""Teams into Superset: roles, row-level security and users from conf/teams.yaml (warehouse/teams.py).
Runs at every Superset start (dashboards/serve.py, after the bundle import) and on its own, against
the Superset home a running server uses (it sees the change at the next request):

    .venv-bi/bin/python -m dashboards.provision [--teams FILE] [--home DIR]

Roles (each idempotent: re-provisioning rewrites them from the file, dashboards and charts stay):

- ``mhw-team-<team>``: data access to every served dataset that has a ``model`` column, and one
  row-level-security filter on all of them, ``teams.Team.predicate`` (its models, never a rollup row
  ``model = 'ALL'``). Filters share the group key ``model``, so a user in two teams sees both.
- ``mhw-viewer``: Superset's Gamma less every write permission (no save, edit, delete, import).
- ``mhw-all-models``: the same data access without a filter (viewers of every model).
- members get Gamma (explore, save their own charts) + their teams; viewers ``mhw-viewer`` + their
  teams (or ``mhw-all-models``); admins Superset's Admin. Only Admin has SQL Lab (Gamma has none),
  and only Admin sees the audit trail (its dataset has no model column: no team role grants it).
- ``mhw-managed`` (no permission) marks the users provisioning owns: one no longer in the file loses
  every role and is deactivated (its charts stay, owned). Users made by hand are left alone.

Passwords: with Superset's database login (AUTH_DB, the default here), a new user gets a generated
password, written to ``<home>/passwords.json`` (0600; the home is 0700 and ignored by git) and printed
once. With another backend (AUTH_LDAP, AUTH_OAUTH … in superset_config), users log in there and
provisioning only sets their roles (their database password is random and never shown).

Each run leaves one audit entry in the lake (command ``provision``, via ``superset``).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DATABASE = "Model health serving"  # dashboards/assets/databases
MANAGED, VIEWER, ALL_MODELS, TEAM = "mhw-managed", "mhw-viewer", "mhw-all-models", "mhw-team-"
RLS_NAME = "mhw team {}"
GROUP_KEY = "model"
# Permissions that change something: a viewer has none of them.
WRITES = {"can_write", "can_add", "can_edit", "can_delete", "can_save", "can_copy_dash", "can_import",
          "can_import_dashboards", "can_overwrite", "can_post", "can_put", "can_favstar", "can_set_embedded",
          "can_delete_embedded", "can_tag", "can_share_dashboard", "can_share_chart", "can_csv_upload",
          "can_excel_upload", "can_columnar_upload", "can_upload", "can_warm_up_cache", "can_bulk_create",
          "can_invalidate"}


def served_datasets():
    """The datasets on the serving database: (those with a model column, the others)."""
    from superset.connectors.sqla.models import SqlaTable
    from superset.extensions import db
    from superset.models.core import Database

    tables = db.session.query(SqlaTable).join(Database).filter(Database.database_name == DATABASE).all()
    with_model = [t for t in tables if any(c.column_name == "model" for c in t.columns)]
    return with_model, [t for t in tables if t not in with_model]


def _role(sm, name: str, pvms) -> object:
    """The role ``name`` holding exactly ``pvms`` (created if absent)."""
    from superset.extensions import db

    role = sm.find_role(name) or sm.add_role(name)
    role.permissions = list(pvms)
    db.session.merge(role)
    return role


def _data_access(sm, datasets) -> list:
    return [sm.add_permission_view_menu("datasource_access", t.perm) for t in datasets]


def _viewer_permissions(sm) -> list:
    gamma = sm.find_role("Gamma")
    return [p for p in gamma.permissions if p.permission.name not in WRITES]


def _rls(team, role, datasets) -> None:
    """The team's one row-level-security filter, on every dataset with a model column."""
    from superset.connectors.sqla.models import RowLevelSecurityFilter
    from superset.extensions import db
    from superset.utils.core import RowLevelSecurityFilterType

    name = RLS_NAME.format(team.name)
    f = db.session.query(RowLevelSecurityFilter).filter_by(name=name).one_or_none()
    if f is None:
        f = RowLevelSecurityFilter(name=name)
        db.session.add(f)
    f.description = f"models of team {team.name}: {', '.join(team.models)} (conf/teams.yaml; never 'ALL' rollups)"
    f.filter_type = RowLevelSecurityFilterType.REGULAR
    f.group_key = GROUP_KEY
    f.clause = team.predicate()
    f.roles = [role]
    f.tables = list(datasets)


def _drop_team(sm, role) -> None:
    from superset.connectors.sqla.models import RowLevelSecurityFilter
    from superset.extensions import db

    name = RLS_NAME.format(role.name[len(TEAM):])
    for f in db.session.query(RowLevelSecurityFilter).filter_by(name=name).all():
        db.session.delete(f)
    for user in db.session.query(sm.user_model).all():
        if role in user.roles:
            user.roles = [r for r in user.roles if r != role]
    db.session.delete(role)


def provision(app, teams, home: Path) -> dict:
    """Apply ``teams`` (warehouse.teams.Teams) to this Superset; returns counts of what changed."""
    from flask_appbuilder.const import AUTH_DB
    from superset import security_manager as sm
    from superset.extensions import db

    counts = {"teams": len(teams.teams), "users_created": 0, "users_updated": 0, "users_deactivated": 0,
              "teams_removed": 0}
    model_sets, _ = served_datasets()
    access = _data_access(sm, model_sets)
    viewer = _role(sm, VIEWER, _viewer_permissions(sm))
    all_models = _role(sm, ALL_MODELS, access)
    managed = _role(sm, MANAGED, [])
    team_roles = {}
    for team in teams.teams.values():
        team_roles[team.name] = role = _role(sm, TEAM + team.name, access)
        _rls(team, role, model_sets)
    for role in list(db.session.query(sm.role_model).filter(sm.role_model.name.like(TEAM + "%"))):
        if role.name[len(TEAM):] not in team_roles:
            _drop_team(sm, role)
            counts["teams_removed"] += 1

    gamma, admin = sm.find_role("Gamma"), sm.find_role("Admin")
    db_login = app.config.get("AUTH_TYPE", AUTH_DB) == AUTH_DB
    passwords_file = home / "passwords.json"
    passwords = json.loads(passwords_file.read_text()) if passwords_file.exists() else {}
    created = {}
    listed = teams.users()
    for name, spec in sorted(listed.items()):
        if spec["admin"]:
            roles = [admin]
        else:
            roles = [viewer if spec["viewer"] else gamma] + \
                ([team_roles[t] for t in spec["teams"]] if spec["teams"] else [all_models])
        roles = [managed, *roles]
        user = sm.find_user(username=name)
        if user is None:
            password = secrets.token_urlsafe(12)
            user = sm.add_user(name, name, "(mhw)", f"{name}@users.mhw.invalid", roles, password=password)
            if not user:
                raise RuntimeError(f"Superset refused to create user {name!r}")
            counts["users_created"] += 1
            if db_login:
                created[name] = passwords[name] = password
        else:
            if {r.name for r in user.roles} != {r.name for r in roles} or not user.active:
                counts["users_updated"] += 1
            user.roles, user.active = roles, True
            sm.update_user(user)
    for user in db.session.query(sm.user_model).all():
        if managed in user.roles and user.username not in listed:
            user.roles, user.active = [], False  # no role, no login; the charts it owns stay
            sm.update_user(user)
            counts["users_deactivated"] += 1
    db.session.commit()
    if created:
        _write_private(passwords_file, json.dumps(passwords, indent=1, sort_keys=True) + "\n")
    for name, pw in created.items():
        print(f"Superset user created: '{name}', password '{pw}' (shown once; kept in {passwords_file}, 0600)",
              flush=True)
    if not db_login and counts["users_created"]:
        print(f"Superset: {counts['users_created']} user(s) created; they log in through the configured "
              "auth backend", flush=True)
    return counts


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_audited(app, teams_path: str | None, home: Path, lake_root: str | None = None) -> dict:
    """Provision with an audit entry in the lake (who: the OS user; via: superset)."""
    from warehouse import audit, config, teams as teams_config

    lake_root = lake_root or config.load().lake_root
    with audit.entry(lake_root, "provision", args={"teams": str(teams_path or teams_config.path()),
                                                   "home": str(home)}, via="superset") as e:
        teams = teams_config.load(teams_path)
        with app.app_context():
            counts = provision(app, teams, home)
        e.record(**counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teams", help="teams file (default conf/teams.yaml or $MHW_TEAMS)")
    p.add_argument("--home", default=os.environ.get("MHW_SUPERSET_HOME") or str(REPO_ROOT / ".mhw" / "superset"))
    args = p.parse_args(argv)
    from dashboards import serve

    home = Path(args.home).resolve()
    serve.prepare_home(home)
    serve.configure_env(home)
    from warehouse.teams import TeamsError

    from superset.app import create_app

    app = create_app()
    try:
        counts = run_audited(app, args.teams, home)
    except TeamsError as e:
        print(f"provision: {e}", file=sys.stderr)
        return 2
    print("Superset teams: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
