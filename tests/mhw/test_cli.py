"""The ``mhw`` command line: on top of the layers, every command listed with its help, and a start-up
that imports only what the command uses (bench/bench_startup.py measures the time; this checks the
imports, which is what the time follows)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mhw.cli import COMMANDS
from warehouse import cli

REPO = Path(__file__).resolve().parents[2]
# What `mhw query` and `mhw alerts` (on a lake without alerts) never need: 0.1-2.5 s of import each.
HEAVY = ("numpy", "pyarrow", "pandas", "torch", "pyspark", "airflow", "transformers", "sqlglot")


# `mhw ARGV...` in a fresh interpreter, then every module it imported (sys.modules, which also has
# the command modules the CLI imports by importlib, unlike `python -X importtime`) on stderr.
RUN_AND_LIST = """import sys
from mhw.cli import main
try:
    sys.exit(main(sys.argv[1:]))
finally:
    print("modules:", *sorted(sys.modules), file=sys.stderr)
"""


def imported(argv: list[str], env: dict) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``mhw *argv`` in a fresh process; the process and the modules it imported."""
    p = subprocess.run([sys.executable, "-c", RUN_AND_LIST, *argv], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    listed = [line for line in p.stderr.splitlines() if line.startswith("modules: ")]
    return p, set(listed[-1].split()[1:]) if listed else set()


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "MHW_LAKE": str(tmp_path / "lake"), "MHW_SERVING": str(tmp_path / "serving.duckdb")}


@pytest.mark.parametrize("argv,needs", [
    (["query", "select 42 as answer"], {"duckdb", "warehouse.query", "warehouse.schemas", "warehouse.config"}),
    (["alerts"], {"pipelines.alerts", "warehouse.schemas", "warehouse.config"}),
    (["alerts", "--format", "json"], {"pipelines.alerts"}),
])
def test_query_and_alerts_import_only_what_they_use(env, argv, needs):
    p, names = imported(argv, env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert needs <= names, sorted(needs - names)  # the command ran through these (the parse is right)
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    # and what they print is what they printed when they imported everything
    if argv[0] == "query":
        assert p.stdout.splitlines() == ["answer", "------", "42    ", "(1 rows)"]
    elif "json" in argv:
        assert p.stdout == ""
    else:
        assert p.stdout.splitlines()[0].split(" | ")[0].strip() == "start_at"
        assert p.stdout.splitlines()[-1] == "(0 rows)"


def test_help_lists_every_command_without_importing_any(env):
    p, names = imported(["--help"], env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "mhw.cli" in names
    for name in COMMANDS:
        assert name in p.stdout
    modules = {module for module, _ in COMMANDS.values()}
    assert not names & modules, sorted(names & modules)


@pytest.mark.parametrize("name", ["query", "alerts", "simulate", "audit", "ingest", "repair"])
def test_each_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert COMMANDS[name][1] in " ".join(capsys.readouterr().out.split())


def test_the_console_script_and_the_old_module_path_run_the_same_cli(env):
    """``mhw`` (pyproject's console script) and ``python -m warehouse.cli`` (older scripts, DAG jobs)."""
    for argv in ([str(Path(sys.executable).parent / "mhw")], [sys.executable, "-m", "warehouse.cli"]):
        p = subprocess.run([*argv, "query", "select 1 as one", "--format", "csv"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert (p.returncode, p.stdout.split()) == (0, ["one", "1"]), (argv, p.stderr[-2000:])
    assert cli.main is __import__("mhw.cli").cli.main


def test_no_layer_imports_the_command_line():
    """mhw/ sits on top: warehouse/, pipelines/ and model/ never import it (the old paths' shims,
    warehouse/cli.py and model/hf_callback.py, aside)."""
    found = []
    shims = (REPO / "warehouse" / "cli.py", REPO / "model" / "hf_callback.py")
    for layer in ("warehouse", "pipelines", "model"):
        for path in sorted((REPO / layer).rglob("*.py")):
            if path in shims:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "mhw" or n.startswith("mhw.")]
    assert found == []


def test_the_layers_import_downwards_only():
    """warehouse/ (schemas, writer, ingest and its importers, query) is the ground floor: it imports
    neither model/ (the jobs) nor pipelines/ (builds, diagnostics), nor importlib's way round them."""
    found = []
    for path in sorted((REPO / "warehouse").rglob("*.py")):
        if path == REPO / "warehouse" / "cli.py":  # the old path's shim onto mhw.cli
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text, str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                names.append(ast.unparse(node.args[0]).strip("'\"f"))
            found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("model", "pipelines")]
    assert found == []
