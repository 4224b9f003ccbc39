"""Put a delivered file to S3 as the day's one object, replacing the previous one.

A single PutObject is atomic: readers see the previous object or the new one, never a part, and a
failed upload (refused, cut off, out of retries) leaves the previous object in place. Credentials and
endpoint come the standard AWS way (environment, profile, SSO, instance or task role; `AWS_ENDPOINT_URL`
or `AWS_ENDPOINT_URL_S3` for an S3-compatible store) and never appear in a message.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError


class S3DeliveryError(RuntimeError):
    """The object could not be put; the message names the bucket, key and what to check."""


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def object_key(s3_uri: str, name: str) -> tuple[str, str]:
    """("bucket", "prefix/name") of `name` under `s3://bucket/prefix`."""
    parts = urlsplit(s3_uri)
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/{name}" if prefix else name


def put_file(path: Path, s3_uri: str, name: str, content_type: str = "text/csv") -> S3Object:
    bucket, key = object_key(s3_uri, name)
    body = path.read_bytes()
    try:
        # A new session each time: boto3's default session keeps the credentials it first found.
        response = boto3.session.Session().client("s3").put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=content_type,
            ContentMD5=_md5_base64(body),  # S3 refuses a body that arrived damaged
        )
    except NoCredentialsError:
        raise S3DeliveryError(f"no AWS credentials to put s3://{bucket}/{key}: set AWS_PROFILE, or "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with a role") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        hint = {"NoSuchBucket": f"the bucket {bucket!r} does not exist: check FINOPS_*_S3_URI",
                "AccessDenied": "the credentials may not s3:PutObject there: check the role or policy",
                "InvalidAccessKeyId": "the access key is not known to this endpoint",
                "SignatureDoesNotMatch": "the secret key does not match the access key"}.get(code, "")
        raise S3DeliveryError(f"S3 refused to put s3://{bucket}/{key} ({code}: {message})"
                              + (f"; {hint}" if hint else "") + "; the previous object, if any, is unchanged") from None
    except BotoCoreError as exc:  # cannot connect, cut off mid-upload, out of retries
        raise S3DeliveryError(f"could not put s3://{bucket}/{key}: {exc}; the previous object, if any, is "
                              "unchanged") from None
    return S3Object(bucket, key, response["ETag"].strip('"'))


def _md5_base64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
