"""Once against a real Spark standalone cluster: a master and two workers started on 127.0.0.1 from
the pyspark package's own jars, executors in their own JVMs. The build must equal DuckDB's."""
import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest

from cube_lake import assert_tables_equal, make_lake, serving_tables
from pipelines.build import build
from pipelines.localhost import free_port

pytestmark = [pytest.mark.spark, pytest.mark.timeout(600)]
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"  # small data: C1 alone finishes sooner
# one executor core on each of the two workers, small JVMs: the build as a cluster application
CLUSTER_CONF = {"spark.executor.memory": "512m", "spark.executor.cores": "1", "spark.cores.max": "2",
                "spark.sql.shuffle.partitions": "2", "spark.executor.extraJavaOptions": QUICK_JVM,
                "spark.driver.extraJavaOptions": QUICK_JVM}


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        pytest.skip("no java")
    return java


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import pyspark
    home = os.path.dirname(pyspark.__file__)  # the package is a SPARK_HOME: jars/ and bin/
    logs = tmp_path_factory.mktemp("spark-cluster")
    # what bin/load-spark-env.sh would export: the workers' launcher needs the Scala version to find jars/
    scala = next(f.split("_")[1].split("-")[0] for f in os.listdir(os.path.join(home, "jars"))
                 if f.startswith("spark-core_"))
    env = {**os.environ, "SPARK_HOME": home, "SPARK_SCALA_VERSION": scala, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(logs)}
    cp = os.path.join(home, "jars", "*")
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = []

    def start(name, *args):
        log = open(logs / f"{name}.log", "w")
        procs.append(subprocess.Popen([_java(), "-Xmx256m", *QUICK_JVM.split(), "-cp", cp, *args], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=logs))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(ui))
        for i in range(2):
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                  "--cores", "1", "--memory", "768m", "--webui-port", "0", "--work-dir", str(logs / f"work{i}"))
        deadline = time.time() + 180
        while True:  # the master's JSON page lists the workers that registered
            try:
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json", timeout=5))
                if sum(w["state"] == "ALIVE" for w in state.get("workers", [])) == 2:
                    break
            except OSError:
                pass
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                logs_text = "\n".join((logs / f).read_text()[-2000:] for f in os.listdir(logs) if f.endswith(".log"))
                pytest.fail(f"standalone cluster did not come up:\n{logs_text}")
            time.sleep(1)
        yield url, ui
    finally:
        for p in reversed(procs):  # workers first (they stop their executors), then the master
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_standalone_cluster_build_equals_duckdb(cluster, tmp_path):
    from pipelines.engines.spark_engine import SparkEngine
    url, ui = cluster
    lake = make_lake(str(tmp_path / "lake"))
    build(lake, str(tmp_path / "duckdb.duckdb"), cubes_root=str(tmp_path / "duckdb-cubes"))
    eng = SparkEngine(master=url, conf=CLUSTER_CONF)
    try:
        r = build(lake, str(tmp_path / "spark.duckdb"), engine=eng, cubes_root=str(tmp_path / "spark-cubes"))
        executors = eng.spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
        app = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json", timeout=5))["activeapps"]
    finally:
        eng.close()
    assert r.engine == "spark" and r.full
    assert executors >= 2  # the driver plus at least one executor JVM on a worker
    assert app and app[0]["cores"] == 2, app  # both workers' cores were granted to the build
    assert_tables_equal(serving_tables(str(tmp_path / "duckdb.duckdb")), serving_tables(str(tmp_path / "spark.duckdb")))


def test_spark_submit_to_the_cluster_builds_a_uri_lake(cluster, tmp_path):
    """`spark-submit pipelines/build.py` as a cluster user runs it, with the lake and the cube store
    given as URIs (file://: the object-store code path, Arrow filesystems and Spark URIs): the served
    cubes equal a DuckDB build of the same lake given as a plain path."""
    import sys

    import pyspark
    url, _ = cluster
    lake = make_lake(str(tmp_path / "lake"))
    build(lake, str(tmp_path / "duckdb.duckdb"), cubes_root=str(tmp_path / "duckdb-cubes"))
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": repo}
    conf = {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1", "spark.ui.enabled": "false",
            **CLUSTER_CONF}
    cmd = [submit, "--master", url, "--deploy-mode", "client"]
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    cmd += [os.path.join(repo, "pipelines", "build.py"), "--engine", "spark", "--quiet",
            "--lake", f"file://{lake}", "--cubes", f"file://{tmp_path / 'spark-cubes'}",
            "--serving", str(tmp_path / "spark.duckdb")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full build" in proc.stdout and "on spark" in proc.stdout, proc.stdout
    assert (tmp_path / "spark-cubes" / "_manifest.json").exists()
    assert_tables_equal(serving_tables(str(tmp_path / "duckdb.duckdb")), serving_tables(str(tmp_path / "spark.duckdb")))
