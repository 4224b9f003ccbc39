"""An export read where Langfuse writes it: a bucket, read in place through fsspec (moto's S3 server on
loopback, reached the standard AWS way)."""

from pathlib import Path

from finops_pipeline.demo.sample_data import WEEKEND_VOLUME, write_sample
from finops_pipeline_tests.conftest import (
    BUCKET,
    DAY,
    check_evaluation,
    materialize_day,
    query,
    replace_settings,
)

COLUMNS = "* EXCLUDE (source_file)"


def upload(s3, folder: Path, prefix: str) -> int:
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder)}", Body=path.read_bytes())
    return len(files)


def test_the_seed_day_read_from_s3_equals_the_same_day_read_from_the_local_folder(settings, tmp_path, s3):
    """The demo's day (JSONL.gz, Parquet and CSV.gz files with manifests, a damaged line, a row on midnight in
    two files), once from a folder and once from the bucket it was uploaded to."""
    local = tmp_path / "export"
    write_sample(tmp_path, [DAY - DAY.resolution, DAY], 400, local, tmp_path / "bills")
    assert upload(s3, local, "langfuse") > 50
    from_folder = materialize_day(replace_settings(settings, home=str(tmp_path / "a"),
                                                   langfuse_export_dir=str(local)), selection=["langfuse_generations"])
    in_bucket = replace_settings(settings, home=str(tmp_path / "b"), langfuse_export_dir=f"s3://{BUCKET}/langfuse")
    from_bucket = materialize_day(in_bucket, selection=["langfuse_generations"])
    assert from_folder.success and from_bucket.success

    a_settings = replace_settings(settings, home=str(tmp_path / "a"))
    staged = query(a_settings, f"SELECT {COLUMNS} FROM langfuse_generations ORDER BY observation_id")
    assert len(staged) == round(400 * WEEKEND_VOLUME) and query(in_bucket, f"SELECT {COLUMNS} FROM langfuse_generations ORDER BY observation_id") == staged
    assert {f for (f,) in query(in_bucket, "SELECT DISTINCT source_file FROM langfuse_generations")} == {
        f"s3://{BUCKET}/langfuse/{Path(f).relative_to(local)}"
        for (f,) in query(a_settings, "SELECT DISTINCT source_file FROM langfuse_generations")}
    # what could not be read is the same, named by its URL
    assert [(Path(f).name, line, why) for f, line, why in query(in_bucket, "SELECT file, line, reason FROM quarantine")] == [
        (Path(f).name, line, why) for f, line, why in query(a_settings, "SELECT file, line, reason FROM quarantine")]
    for result in (from_folder, from_bucket):
        complete = check_evaluation(result, "extraction_complete")
        assert complete.passed and "hold exactly the rows their manifest counts" in complete.description


def test_a_bucket_without_the_export_says_where_it_looked(settings, s3):
    result = materialize_day(settings, selection=["langfuse_generations"],
                             langfuse_export_dir=f"s3://{BUCKET}/no-such-prefix")
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert f"Nothing under s3://{BUCKET}/no-such-prefix: the bucket exists but holds no export" in message


def test_a_bucket_that_does_not_exist_is_named(settings, s3):
    result = materialize_day(settings, selection=["langfuse_generations"],
                             langfuse_export_dir="s3://no-such-bucket/langfuse")
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "The Langfuse export's bucket s3://no-such-bucket does not exist, or these credentials cannot see it" in message


def test_a_bucket_that_cannot_be_reached_fails_the_day_naming_it(settings, s3, monkeypatch):
    s3.put_object(Bucket=BUCKET, Key="langfuse/p/manifests/x.json", Body=b"{}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: the listing cannot be had
    result = materialize_day(settings, selection=["langfuse_generations"], langfuse_export_dir=f"s3://{BUCKET}/langfuse")
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert f"Cannot list the Langfuse export at s3://{BUCKET}/langfuse" in message and "testing" not in message
