"""Security properties: the database password stays out of what Dagster shows and records and out
of the CLI's output; storage keys never carry user text; the local store stays inside its buckets;
a download reaches only the objects of the version it names."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from seed import add_to_file, claimed_request, demo_dataset, eligible, seed_dataset

from assets.partitions import REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.cli import main
from brightrun_pipeline.config import load_settings
from brightrun_pipeline.definitions import build_definitions
from brightrun_pipeline.errors import InvalidKey
from brightrun_pipeline.outputs import EXPORTS, OUTPUT_NAMES
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore
from jobs import TRAINING_FILE_JOB

PASSWORD = "Pw-7f3e-do-not-show"
AWS_SECRET = "aws-secret-5c1d-do-not-show"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# A version's objects (brightrun_pipeline.outputs) and its derived readiness report.
OBJECT_KEY = re.compile(rf"({UUID})/v([1-9][0-9]*)/"
                        rf"({'|'.join(re.escape(n) for n in (*OUTPUT_NAMES, 'readiness.json'))})")


def with_password(url: str) -> str:
    """The same PostgreSQL URL with a password (trust authentication ignores it)."""
    assert "postgres@" in url
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """`brightrun` in this process: exit code and everything it printed."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def use_environment(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Only the given BRIGHTRUN_* variables (and DAGSTER_HOME), as a deployment sets them."""
    for name in list(os.environ):
        if name.startswith("BRIGHTRUN_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


# --- Secrets ---------------------------------------------------------------------------------


def shown_config(defs: dg.Definitions) -> list[str]:
    """The configured values of our resources as Dagster serializes them for its UI (the JSON of
    each resource's config defaults), the nested database and storage resources included."""
    brightrun = defs.resources["brightrun"]
    shown = []
    for resource in (brightrun, brightrun.database, brightrun.storage):
        schema = resource.get_resource_definition().config_schema
        if schema.default_provided:
            shown.append(schema.default_value_as_json_str)
    return shown


def test_the_database_password_reaches_dagster_as_an_environment_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://brightrun:" + PASSWORD + "@db.internal:5432/brightrun"
    use_environment(monkeypatch, BRIGHTRUN_DATABASE_URL=url, BRIGHTRUN_STORAGE_BACKEND="s3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)

    defs = build_definitions(load_settings())

    database = defs.resources["brightrun"].database
    assert isinstance(database.url, dg.EnvVar)
    assert database.url.env_var_name == "BRIGHTRUN_DATABASE_URL"
    # Used outside a run (the CLI after an in-process run), the resource reads the variable.
    assert database.database().url == url
    storage = defs.resources["brightrun"].storage
    # boto3 reads the AWS credentials from the environment itself; the resource holds none.
    assert (storage.aws_access_key_id, storage.aws_secret_access_key) == (None, None)
    shown = shown_config(defs)
    assert '{"url": {"env": "BRIGHTRUN_DATABASE_URL"}}' in shown
    assert not [text for text in shown if PASSWORD in text or AWS_SECRET in text]


def test_the_embedded_default_database_is_a_plain_value(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_environment(monkeypatch, BRIGHTRUN_HOME=str(tmp_path))

    defs = build_definitions(load_settings())

    url = defs.resources["brightrun"].database.url
    assert not isinstance(url, dg.EnvVar)
    assert url == f"sqlite:///{tmp_path / 'brightrun.db'}"
    # Settings read from a given mapping (not this process's environment) carry the value itself.
    given = load_settings({"BRIGHTRUN_DATABASE_URL": "sqlite:///elsewhere.db"})
    assert (given.database_url, given.database_url_env) == ("sqlite:///elsewhere.db", None)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_password_never_reaches_runs_events_or_logs(
        database_url: str, pipeline: Pipeline, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    use_environment(monkeypatch, BRIGHTRUN_DATABASE_URL=with_password(database_url),
                    BRIGHTRUN_STORAGE_ROOT=str(tmp_path / "storage"))
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    request_id = claimed_request(pipeline, eligible(dataset)[:2], new_file_name="Secret file")
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.target_file_id is not None
    file_id = request.target_file_id
    defs = build_definitions(load_settings())
    home = tmp_path / "dagster"
    home.mkdir()

    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions("training_files", [file_id])
        result = defs.resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
            instance=instance, partition_key=file_id,
            tags={REQUEST_TAG: request_id, TRAINING_FILE_TAG: file_id})
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        records = [dg.serialize_value(run), *map(dg.serialize_value,
                                                 instance.all_logs(result.run_id))]
        job_snapshot = instance.get_job_snapshot(run.job_snapshot_id)  # type: ignore[arg-type]
        records.append(dg.serialize_value(job_snapshot))

    # The run used the URL from the environment: it published through that connection.
    assert pipeline.db.get_version(file_id) is not None
    assert len(records) > 10
    assert not [record for record in records if PASSWORD in record]
    assert PASSWORD not in caplog.text
    stored = [path for path in home.rglob("*") if path.is_file()
              and PASSWORD.encode() in path.read_bytes()]
    assert stored == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_cli_never_prints_the_password(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_environment(monkeypatch, BRIGHTRUN_DATABASE_URL=with_password(database_url),
                    BRIGHTRUN_STORAGE_ROOT=str(tmp_path / "storage"),
                    DAGSTER_HOME=str(tmp_path / "dagster"))

    code, output = cli(capsys, "init")
    assert code == 0, output
    assert "database ready: postgresql+psycopg://postgres:***@127.0.0.1:5432/" in output
    assert PASSWORD not in output
    for args in (["files", "list"], ["requests", "list"], ["files", "show", "Nothing"]):
        code, output = cli(capsys, *args)
        assert PASSWORD not in output, (args, output)

    # A database that cannot be reached: the error names the server, not the password.
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL",
                       f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:9/nowhere")
    code, output = cli(capsys, "files", "list")
    assert code == 1 and output.startswith("error: database:"), output
    assert PASSWORD not in output
    assert "Traceback" not in output


# --- Storage keys ------------------------------------------------------------------------------


HOSTILE_NAMES = [
    "../../etc/passwd",
    "/absolute/name",
    "..",
    "a\\b\\..\\c",
    "%2e%2e%2fescaped",
    "名前 · ünïcødé ../x",
    "training-files/other/v1/training.json",
    "CON",
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_object_keys_never_carry_user_text(pipeline: Pipeline, tmp_path: Path) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    file_ids = []
    for index, name in enumerate(HOSTILE_NAMES):
        request = pipeline.submit(conversation_ids=[rows[index % len(rows)].conversation_id],
                                  new_file_name=name, description=f"{name}/../../{name}",
                                  requested_by="../../root")
        assert pipeline.claim(request.id) is not None
        file_ids.append(pipeline.run_request(request.id, f"run-{index}").training_file_id)
    add_to_file(pipeline, file_ids[0], rows[-1:])

    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    keys = list(store.list_keys(pipeline.training_bucket))
    # Every object of every version (no split: json, jsonl, each export, manifest).
    assert len(keys) == (3 + len(EXPORTS)) * (len(HOSTILE_NAMES) + 1)
    for key in keys:
        match = OBJECT_KEY.fullmatch(key)
        assert match is not None, key
        assert match.group(1) in file_ids
    assert {OBJECT_KEY.fullmatch(k).group(1) for k in keys} == set(file_ids)  # type: ignore[union-attr]
    assert {f.name for f, _ in pipeline.db.list_files()} == {n.strip() for n in HOSTILE_NAMES}
    # Nothing was written anywhere else: every file under the storage root is a source or an
    # object at one of those keys, and the scratch areas are empty.
    training_dir = store.root / pipeline.training_bucket
    written = {path.relative_to(training_dir).as_posix()
               for path in training_dir.rglob("*") if not path.is_dir()}
    assert written == set(keys)
    outside = [path for path in store.root.iterdir()
               if path.name not in (pipeline.training_bucket, pipeline.source_bucket)]
    assert outside == []
    for bucket in (pipeline.training_bucket, pipeline.source_bucket):
        assert list((store.root / bucket / ".scratch").glob("*")) == []


# --- The local store's root ------------------------------------------------------------------


@pytest.fixture
def escapes(tmp_path: Path) -> tuple[LocalObjectStore, Path]:
    """A local store whose training bucket holds symlinks out of it: to a directory outside the
    root, to the source bucket next to it, and to a file of the source bucket."""
    store = LocalObjectStore(tmp_path / "store")
    store.ensure_bucket("training-files")
    store.ensure_bucket("conversation-files")
    store.put_bytes("conversation-files", "u/c/enriched.json", b"source")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    bucket_dir = store.root / "training-files"
    (bucket_dir / "out").symlink_to(outside, target_is_directory=True)
    (bucket_dir / "sources").symlink_to(store.root / "conversation-files",
                                        target_is_directory=True)
    (bucket_dir / "source-file").symlink_to(store.root / "conversation-files" / "u" / "c"
                                            / "enriched.json")
    return store, outside


ESCAPING_KEYS = ["out/secret", "out/new", "sources/u/c/enriched.json", "sources/u/new",
                 "source-file"]


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_the_local_store_refuses_every_operation_through_a_symlink(
        escapes: tuple[LocalObjectStore, Path], tmp_path: Path, key: str) -> None:
    store, outside = escapes
    upload = tmp_path / "upload"
    upload.write_bytes(b"planted")
    operations: list[Callable[[], object]] = [
        lambda: store.stat("training-files", key),
        lambda: store.open_read("training-files", key).__enter__(),
        lambda: store.local_path("training-files", key),
        lambda: store.put_file("training-files", key, upload),
        lambda: store.put_bytes("training-files", key, b"planted", replace=True),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey):
            operation()

    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert list(store.list_keys("conversation-files")) == ["u/c/enriched.json"]
    assert store.get_bytes("conversation-files", "u/c/enriched.json") == b"source"
    assert list(store.list_keys("training-files")) == []
    assert list(store.list_keys("training-files", "sources/")) == []


def test_the_local_store_never_leaves_its_root_by_bucket_name(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    store.ensure_bucket("training-files")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    for bucket in ("../outside", "/abs", "training-files/../../outside"):
        with pytest.raises(InvalidKey):
            store.get_bytes(bucket, "secret")
        with pytest.raises(InvalidKey):
            store.put_bytes(bucket, "planted", b"x")
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret"]


# --- Downloads -------------------------------------------------------------------------------


@pytest.fixture
def two_files(pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              database_url: str) -> tuple[Pipeline, str, str]:
    """Files A and B published in the test's database, and the CLI's environment pointing there."""
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    ids = []
    for name, chosen in (("File A", rows[:2]), ("File B", rows[2:4])):
        request_id = claimed_request(pipeline, chosen, new_file_name=name)
        ids.append(pipeline.run_request(request_id, f"run-{name[-1]}").training_file_id)
    use_environment(monkeypatch, BRIGHTRUN_DATABASE_URL=database_url,
                    BRIGHTRUN_STORAGE_ROOT=str(tmp_path / "storage"),
                    DAGSTER_HOME=str(tmp_path / "dagster"))
    return pipeline, ids[0], ids[1]


def test_a_download_reaches_only_the_file_it_names(
        two_files: tuple[Pipeline, str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pipeline, file_a, file_b = two_files
    output = tmp_path / "out" / "download.json"
    code, printed = cli(capsys, "files", "download", "File A", "--format", "json",
                        "--output", output)
    assert code == 0, printed
    assert output.read_bytes() == pipeline.store.get_bytes(pipeline.training_bucket,
                                                           f"{file_a}/v1/training.json")
    output.unlink()

    for ref in (f"../{file_b}", f"{file_b}/v1/training.json", f"{file_a}/../{file_b}",
                f"training-files/{file_b}", "conversation-files", "../../etc/passwd",
                f"{file_a}/v1", "/" + file_b):
        code, printed = cli(capsys, "files", "download", ref, "--format", "json",
                            "--output", output)
        assert (code, printed.strip()) == (
            2, f"error: no training file named or with id {ref!r}"), printed
    for options in (["--format", "../manifest"], ["--format", "json", "--version", "0"],
                    ["--format", "json", "--version", "1/../2"],
                    ["--format", "json", "--version", "2"]):
        code, printed = cli(capsys, "files", "download", file_a, *options, "--output", output)
        assert code == 2, printed
    assert not output.exists()
    assert list(output.parent.iterdir()) == []


@pytest.mark.parametrize("tampered", ["{other}/v1/training.json", "{other}/v1/manifest.json",
                                      "{own}/v2/training.json", "../conversation-files/x",
                                      "u/{own}/enriched.json"])
def test_a_version_row_pointing_elsewhere_is_refused(
        two_files: tuple[Pipeline, str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], tampered: str) -> None:
    pipeline, file_a, file_b = two_files
    key = tampered.format(own=file_a, other=file_b)
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE training_file_versions SET json_key = :key WHERE training_file_id = :id"),
            {"key": key, "id": file_a})
        # Downloads read a version's objects by name: its training.json record points away too.
        connection.execute(sa.text(
            "UPDATE training_file_version_objects SET key = :key "
            "WHERE training_file_id = :id AND name = 'training.json'"),
            {"key": key, "id": file_a})
    output = tmp_path / "download.json"

    code, printed = cli(capsys, "files", "download", "File A", "--format", "json",
                        "--output", output)

    assert code == 1, printed
    assert printed.startswith(f"error: version 1 of 'File A' records the key {key!r}"), printed
    assert not output.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".download")] == []
    # Its other objects still download: only the tampered key is refused.
    code, printed = cli(capsys, "files", "download", "File A", "--format", "jsonl",
                        "--output", output)
    assert code == 0, printed

