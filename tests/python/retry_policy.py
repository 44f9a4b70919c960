"""The shipped gRPC service config, tried with a real gRPC client (grpcio).

Against a service started with --max-concurrent-uploads 1
--upload-slot-wait 0s --max-image-bytes 4000, and its HTTP address for the
metrics:
- an upload refused because the only slot is busy is retried by gRPC itself,
  with backoff, and succeeds once the slot is free;
- an upload over a fixed limit is not retried: the service marks it with
  grpc-retry-pushback-ms: -1, and it reaches the service exactly once.

    python retry_policy.py GRPC_ADDR HTTP_ADDR
"""
import json
import os
import re
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))
import image_client  # noqa: E402  (generates the stubs)

image_client.generate_stubs()
import grpc  # noqa: E402
from imageservice.v1 import image_service_pb2 as pb  # noqa: E402
from imageservice.v1 import image_service_pb2_grpc as rpc  # noqa: E402

grpc_addr, http_addr = sys.argv[1], sys.argv[2]
with open(image_client.SERVICE_CONFIG) as f:
    config = json.dumps(json.load(f))
small = open(os.path.join(ROOT, "examples", "images", "sunrise.png"), "rb").read()
large = open(os.path.join(ROOT, "examples", "images", "phone-photo.jpg"), "rb").read()


def stub(retries):
    options = [("grpc.enable_retries", 1 if retries else 0)]
    if retries:
        options.append(("grpc.service_config", config))
    return rpc.ImageServiceStub(grpc.insecure_channel(grpc_addr, options=options))


def messages(data, pause=0.0):
    yield pb.UploadImageRequest(spec=pb.ImageSpec(filename="retry.png"))
    if pause:
        time.sleep(pause)
    yield pb.UploadImageRequest(chunk=data, finish_write=True)


def refused_uploads():
    text = urllib.request.urlopen(f"http://{http_addr}/metrics").read().decode()
    found = re.search(r'imageservice_grpc_requests_total\{method="UploadImage",code="RESOURCE_EXHAUSTED"\} (\d+)', text)
    return int(found.group(1)) if found else 0


# Another caller holds the only slot for half a second: long enough that
# gRPC's first attempts meet it, short enough that its five attempts (with
# randomised backoff of up to 0.25, 0.5, 1 and 2 s between them) all but
# surely outlast it.
holder = threading.Thread(target=lambda: stub(False).UploadImage(
    messages(small, pause=0.5), metadata=[("x-user-id", "bob")]))
holder.start()
time.sleep(0.15)
try:
    stub(False).UploadImage(messages(small), metadata=[("x-user-id", "alice")])
    sys.exit("the slot was not busy: the check proves nothing")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
before = refused_uploads()
started = time.time()
image = stub(True).UploadImage(messages(small), metadata=[("x-user-id", "alice")]).image
holder.join()
retried = refused_uploads() - before
print(f"busy replica: stored {image.image_id} after {time.time() - started:.2f} s and {retried} refused attempt(s)")
assert retried >= 1, "gRPC never met the busy slot"

before = refused_uploads()
try:
    stub(True).UploadImage(messages(large), metadata=[("x-user-id", "alice")])
    sys.exit("an image over --max-image-bytes was stored")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    pushback = dict(error.trailing_metadata()).get("grpc-retry-pushback-ms")
attempts = refused_uploads() - before
print(f"over a limit: refused with grpc-retry-pushback-ms {pushback}, after {attempts} attempt(s)")
assert pushback == "-1" and attempts == 1, "an upload over a limit was retried"
print("retry policy: passed")
