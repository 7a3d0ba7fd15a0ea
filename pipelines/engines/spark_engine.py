"""Spark: the same SQL, translated mechanically by sqlglot (pipelines.models.to_spark), for lakes
bigger than one machine. ``local[*]`` by default; a master URL (``spark://host:7077``, ``yarn``,
``k8s://…``) or ``spark-submit`` for clusters. Lake paths may be object-store URIs (``s3://`` is read
as ``s3a://``, which needs the hadoop-aws jars on the cluster)."""
from __future__ import annotations

import functools
import os

import pyarrow as pa

from pipelines.engines import normalize
from pipelines.models import to_spark

DEFAULT_CONF = {
    "spark.app.name": "mhw-build",
    "spark.sql.session.timeZone": "UTC",  # dates and timestamps mean the same as in DuckDB
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",  # cube inputs are small after the base scan; AQE coalesces
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",  # model "7" stays a string
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "4g",  # local mode: the executors live in the driver's JVM
}
LOCAL_CONF = {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1",
              "spark.ui.enabled": "false",
              # the build hands Spark explicit file lists: on a local disk, stat them on the driver
              # rather than in a listing job (3-10 s per model on 560 files of a 10M-row lake)
              "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000"}


def spark_path(path: str) -> str:
    return "s3a://" + path[len("s3://"):] if path.startswith("s3://") else path


@functools.lru_cache(maxsize=256)
def _translated(sql: str) -> str:
    return to_spark(sql)


def _spark_type(t: pa.DataType):
    from pyspark.sql import types as T
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return T.StringType()
    if pa.types.is_int64(t):
        return T.LongType()
    if pa.types.is_int32(t):
        return T.IntegerType()
    if pa.types.is_float64(t):
        return T.DoubleType()
    if pa.types.is_boolean(t):
        return T.BooleanType()
    if pa.types.is_date32(t):
        return T.DateType()
    if pa.types.is_timestamp(t):
        return T.TimestampType() if t.tz else T.TimestampNTZType()
    raise TypeError(f"no Spark type for {t}")


def spark_schema(schema: pa.Schema, as_strings: tuple[str, ...] = ()):
    from pyspark.sql import types as T
    return T.StructType([T.StructField(f.name, T.StringType() if f.name in as_strings else _spark_type(f.type))
                         for f in schema])


class SparkEngine:
    name = "spark"

    def __init__(self, master: str | None = None, conf: dict[str, str] | None = None):
        from pyspark.sql import SparkSession
        builder = SparkSession.builder
        under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit already chose a master
        master = master or (None if under_submit else "local[*]")
        settings = dict(DEFAULT_CONF)
        self.local_cores = None
        if master:
            builder = builder.master(master)
            if master.startswith("local") or "127.0.0.1" in master or "localhost" in master:
                settings.update(LOCAL_CONF)
            if master.startswith("local"):
                n = master[len("local["):-1].split(",")[0] if master.startswith("local[") else "1"
                self.local_cores = (os.cpu_count() or 1) if n == "*" else int(n)
                settings["spark.sql.shuffle.partitions"] = str(2 * self.local_cores)
        settings.update(conf or {})
        for k, v in settings.items():
            builder = builder.config(k, v)
        self.spark = builder.getOrCreate()
        self.spark.sparkContext.setLogLevel("ERROR")
        self._cached: dict = {}

    def session(self) -> "SparkEngine":
        """A new SparkSession on the same SparkContext: its own temp views, the same executors."""
        other = object.__new__(SparkEngine)
        other.spark, other.local_cores = self.spark.newSession(), self.local_cores
        other._cached = {}
        return other

    def register_arrow(self, name: str, table: pa.Table) -> None:
        # straight from Arrow: nulls stay nulls and NaN stays NaN (a pandas hop would merge them)
        df = self.spark.createDataFrame(table) if table.num_rows \
            else self.spark.createDataFrame([], spark_schema(table.schema))
        df.createOrReplaceTempView(name)

    def register_files(self, name: str, files: list[str], schema: pa.Schema,
                       partition_cols: tuple[str, ...] = (), base_dir: str | None = None) -> None:
        from pyspark.sql import functions as F
        if not files:
            self.spark.createDataFrame([], spark_schema(schema)).createOrReplaceTempView(name)
            return
        file_fields = [f for f in schema if f.name not in partition_cols]
        read_fields = pa.schema(file_fields + [pa.field(k, pa.string()) for k in partition_cols])
        reader = self.spark.read.schema(spark_schema(read_fields))
        if partition_cols:
            reader = reader.option("basePath", spark_path(base_dir))
        else:  # self-contained files: no partition discovery from their folders' names
            reader = reader.option("recursiveFileLookup", "true")
        df = reader.parquet(*[spark_path(f) for f in files])
        # The schema contract: exactly the declared columns, in order, with their types.
        df = df.select([F.col(f.name).cast(_spark_type(f.type)).alias(f.name) for f in schema])
        df.createOrReplaceTempView(name)

    def materialize(self, name: str, sql: str) -> None:
        """The result of ``sql`` cached (memory, else disk) as temp view ``name``: computed once, read by
        many queries. A name materialized again drops the old cache."""
        from pyspark import StorageLevel
        old = self._cached.pop(name, None)
        df = self.spark.sql(_translated(sql)).persist(StorageLevel.MEMORY_AND_DISK)
        df.count()  # compute it now, not once per reader
        df.createOrReplaceTempView(name)
        self._cached[name] = df
        if old is not None:
            old.unpersist()

    def register_view(self, name: str, sql: str) -> None:
        self.spark.sql(_translated(sql)).createOrReplaceTempView(name)

    def query(self, sql: str) -> pa.Table:
        return normalize(self.spark.sql(_translated(sql)).toArrow())

    def close(self) -> None:
        self.spark.stop()
