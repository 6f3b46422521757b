"""botocore's S3SigV4Auth signing requests that dcpp's signer signs too (tests/s3).

Reads JSON lines from stdin, one request each: {"method", "host", "path" (raw, not encoded),
"query": [[name, value], ...] (raw), "headers": [[name, value], ...], "body_hex", "access",
"secret", "token", "region", "date" ("YYYYMMDDTHHMMSSZ")}, and prints for each the
Authorization header botocore computes, one per line. The clock botocore reads is set to the
request's date; botocore adds X-Amz-Date, X-Amz-Content-SHA256 (the body's SHA-256) and, with a
token, X-Amz-Security-Token itself, as it does for every S3 request it sends.
"""
import datetime
import json
import sys
from urllib.parse import quote

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def sign(case):
    when = datetime.datetime.strptime(case["date"], "%Y%m%dT%H%M%SZ")
    botocore.auth.get_current_datetime = lambda *args, **kwargs: when
    body = bytes.fromhex(case["body_hex"])
    url = "http://" + case["host"] + quote(case["path"], safe="/~")
    request = AWSRequest(method=case["method"], url=url, data=body,
                         params=[(k, v) for k, v in case["query"]])
    for name, value in case["headers"]:
        request.headers[name] = value
    credentials = Credentials(case["access"], case["secret"], case["token"] or None)
    botocore.auth.S3SigV4Auth(credentials, "s3", case["region"]).add_auth(request)
    return request.headers["Authorization"]


for line in sys.stdin:
    if line.strip():
        print(sign(json.loads(line)), flush=True)
