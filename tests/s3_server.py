"""An S3-compatible server that can be stopped and started again with its objects, as a MinIO or Ceph
gateway restarting with its disk (tests/datamodules/test_litdata_s3.py).

    python tests/s3_server.py PORT FOLDER BUCKET PREFIX

Loads every file under FOLDER as ``s3://BUCKET/PREFIX/<relative path>`` into moto's in-process
store, then serves it on 127.0.0.1:PORT (0: a free port) and prints the port. Killing the process
stops the server whole (its listening socket and every open connection: clients get "connection
refused"); running it again with the printed port starts it with the same objects.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import boto3
from moto import mock_aws
from moto.server import ThreadedMotoServer


def main() -> None:
    port, folder, bucket, prefix = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[key]  # the client below must stay in this process, where moto catches its calls
    mock_aws().start()  # this process's boto3 writes into moto's store, which the server then serves
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
