"""Storage backends to test: a local directory, and a bucket on moto's S3 server on a loopback port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinema.settings import Settings
from kinema.storage import Storage, open_storage
from kinema.storage.local import LocalStorage

ACCESS_KEY, SECRET_KEY = "AKIAKINEMATEST000000", "kinema-test-secret-never-shown"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread on a free loopback port, with test credentials in boto3's chain.

    Credentials come from the environment, as a deployment's would; no profile, config file or instance
    metadata lookup can reach outside the machine.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_CONFIG_FILE", "/nonexistent/kinema-test-aws-config")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kinema-test-aws-credentials")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def s3_admin(s3_endpoint: str) -> Any:
    """A plain boto3 client on the moto server, to look at the bucket from outside kinema."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"kinema-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


def s3_settings(tmp_path: Path, endpoint: str, bucket: str, **overrides: Any) -> Settings:
    """Settings that store in the bucket under the prefix kinema/, staging under tmp_path."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "storage_backend": "s3",
        "s3_bucket": bucket,
        "s3_prefix": "kinema/",
        "s3_endpoint_url": endpoint,
        "s3_region": REGION,
        "staging_dir": tmp_path / "staging",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend in turn, built as a server builds it (open_storage from settings)."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_storage(s3_settings(tmp_path, endpoint, request.getfixturevalue("bucket")))
