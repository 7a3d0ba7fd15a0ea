"""Start Superset with the model-health dashboards: ``make superset`` (or ``.venv-bi/bin/python -m
dashboards.serve``). Runs in .venv-bi.

One process does the whole start: generate the SECRET_KEY on first start (into the ignored Superset
home, .mhw/superset by default), remove a ``<serving>.wal`` (read-only opens would replay it over the
serving file; no one writes that file in place), migrate the SQLite metadata DB, sync roles, create or
update the admin user, import the YAML bundle of dashboards/assets (rendered for this machine's serving
file), provision the teams of conf/teams.yaml (dashboards/provision.py: roles, row-level security,
users), then serve with gunicorn on 127.0.0.1 only, from the app already loaded (no second 15 s import).

    MHW_SUPERSET_HOME      Superset home (metadata DB, secret); default <repo>/.mhw/superset
    MHW_SUPERSET_PASSWORD  admin password; without it a password is generated and printed once,
                           when the admin is first created (set it later to reset the password)
    MHW_SUPERSET_PORT      port on 127.0.0.1; default 8088 (or --port)
    MHW_SERVING            serving DuckDB file the dashboards read (default from conf/mhw.yaml)
    MHW_TEAMS              teams file (default conf/teams.yaml)
    MHW_LAKE               lake whose audit trail records the provisioning (default from conf/mhw.yaml)
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
ADMIN = "admin"


def prepare_home(home: Path) -> None:
    """The Superset home exists, private, with a SECRET_KEY of its own (generated once)."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    secret = home / "secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")


def configure_env(home: Path) -> None:
    os.environ["MHW_SUPERSET_HOME"] = str(home)
    os.environ["SUPERSET_CONFIG_PATH"] = str(HERE / "superset_config.py")
    os.environ.setdefault("SUPERSET_HOME", str(home))  # Superset's own data dir (uploads, …)
    os.environ["FLASK_APP"] = "superset.app:create_app()"
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def set_up(app, serving: str | None, home: Path) -> None:
    """Migrate, sync roles, admin user, import the bundle, provision the teams: idempotent, every start."""
    import flask_migrate
    import superset
    from flask import g
    from superset import appbuilder, security_manager
    from superset.commands.importers.v1.assets import ImportAssetsCommand
    from superset.extensions import db

    from dashboards import bundle

    with app.app_context():
        flask_migrate.upgrade(directory=str(Path(superset.__file__).parent / "migrations"))
        appbuilder.add_permissions(update_perms=True)
        security_manager.sync_role_definitions()

        password = os.environ.get("MHW_SUPERSET_PASSWORD")
        user = security_manager.find_user(username=ADMIN)
        if user is None:
            generated = password is None
            password = password or secrets.token_urlsafe(12)
            user = security_manager.add_user(ADMIN, "Model", "Health", "admin@localhost",
                                             security_manager.find_role("Admin"), password=password)
            if generated:
                print(f"Superset admin created: user '{ADMIN}', password '{password}' "
                      "(shown once; set MHW_SUPERSET_PASSWORD to choose or reset it)", flush=True)
        elif password is not None:
            security_manager.reset_password(user.id, password)

        g.user = user  # importers record the owner and check write access
        ImportAssetsCommand(bundle.contents(serving=serving)).run()
        db.session.commit()
        db.engine.dispose()  # no connection crosses gunicorn's fork
        print(f"Superset: imported {len(bundle.load())} assets from {bundle.ASSETS}", flush=True)
    from dashboards import provision

    counts = provision.run_audited(app, None, home)
    print("Superset teams: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)


def serve(app, port: int, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"127.0.0.1:{port}")  # loopback only
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 120)
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")

        def load(self):
            return app

    Server().run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=int(os.environ.get("MHW_SUPERSET_PORT", 8088)))
    p.add_argument("--home", default=os.environ.get("MHW_SUPERSET_HOME") or str(REPO_ROOT / ".mhw" / "superset"))
    p.add_argument("--serving", help="serving DuckDB file (default from config)")
    p.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    p.add_argument("--threads", type=int, default=8, help="threads per worker")
    p.add_argument("--setup-only", action="store_true", help="set up and import, then exit")
    args = p.parse_args(argv)

    home = Path(args.home).resolve()
    prepare_home(home)
    configure_env(home)
    if args.serving:  # superset_config's connection mutator allows this file and no other
        os.environ["MHW_SERVING"] = os.path.abspath(args.serving)
    from dashboards import bundle
    from warehouse.readonly import remove_wal

    serving = bundle.serving_path()
    if remove_wal(serving):
        print(f"Superset: removed {serving}.wal (no build writes one)", flush=True)
    from superset.app import create_app

    app = create_app()
    set_up(app, args.serving, home)
    if args.setup_only:
        return 0
    print(f"Superset: http://127.0.0.1:{args.port}/  (home {home})", flush=True)
    serve(app, args.port, args.workers, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
