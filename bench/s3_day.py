"""`python bench/s3_day.py FOLDER`: moto's S3 server on loopback holding FOLDER (an export) under
s3://bench/export; prints the endpoint, then serves until stdin closes. The bench reads a day from it the
way a team's bucket is read (sources/object_storage.py)."""

import sys
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

BUCKET, PREFIX = "bench", "export"


def main() -> None:
    folder = Path(sys.argv[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(folder)}")
    print(endpoint, flush=True)
    sys.stdin.read()  # until the bench is done
    server.stop()


if __name__ == "__main__":
    main()
