"""The retry budget of LitData reads from an object store (chute.integrations.litdata_retry): which
errors are worth another try, and the error that ends the tries. The store itself going down and
coming back is tests/datamodules/test_litdata_s3.py."""

from __future__ import annotations

import pytest

from chute.errors import ConfigError, DataError
from chute.integrations.litdata_retry import Outage

botocore = pytest.importorskip("botocore.exceptions")
obstore = pytest.importorskip("obstore.exceptions")


def _client_error(status: int) -> Exception:
    response = {"Error": {"Code": str(status), "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.ClientError(response, "GetObject")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("err", "again"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (RuntimeError("Chunk prefetch thread crashed while waiting for chunk-0-3.bin"), True),
        (botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (_client_error(503), True),
        (_client_error(429), True),
        (obstore.GenericError("error sending request"), True),
        (_client_error(404), False),  # not there: another try finds nothing either
        (_client_error(403), False),
        (obstore.NotFoundError("chunk-0-3.bin"), False),
        (DataError("a chunk names a pickle serializer"), False),
        (ConfigError("data.x", 1, "bad"), False),
        (ValueError("bad bytes"), False),
    ],
)
def test_only_transfer_errors_are_tried_again(err: Exception, again: bool) -> None:
    assert Outage.transient(err) is again


def test_a_read_that_comes_back_is_returned_and_one_that_does_not_is_named() -> None:
    outage = Outage("s3://bucket/data/train", "http://127.0.0.1:9000", seconds=2)
    failures = iter([ConnectionResetError(104, "reset"), TimeoutError("timed out")])
    resets = []

    def flaky() -> str:
        for err in failures:
            raise err
        return "sample"

    assert outage.call(flaky, reset=lambda: resets.append(1)) == "sample"
    assert len(resets) == 2  # read again after each failure, from a fresh reader

    def down() -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(DataError) as err:
        Outage("s3://bucket/data/train", "http://127.0.0.1:9000", seconds=0.6).call(down)
    message = str(err.value)
    for part in ("s3://bucket/data/train", "the endpoint http://127.0.0.1:9000", "Connection refused", "(now 0.6)"):
        assert part in message
    with pytest.raises(ValueError, match="bad bytes"):  # not a transfer error: raised at once, as it was
        Outage("s3://b/d", None, seconds=60).call(lambda: (_ for _ in ()).throw(ValueError("bad bytes")))
