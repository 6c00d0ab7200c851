"""S3 test helpers: buckets on the moto server started by the `s3_server` fixture."""

from __future__ import annotations

import uuid


def new_bucket_env(s3_server: str) -> dict[str, str]:
    """Create a fresh bucket on the moto server; the STEMFLEET_S3_* settings that reach it."""
    import boto3

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    env = {
        "STEMFLEET_STORAGE": "s3",
        "STEMFLEET_S3_ENDPOINT_URL": s3_server,
        "STEMFLEET_S3_REGION": "us-east-1",
        "STEMFLEET_S3_BUCKET": bucket,
        "STEMFLEET_S3_ACCESS_KEY_ID": "testing",
        "STEMFLEET_S3_SECRET_ACCESS_KEY": "testing",
    }
    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    return env
