"""A small Python client of image-service: upload a file, list, download.

The gRPC stubs are generated from ../../proto with grpcio-tools on first run
(into ./generated), exactly as a service in Python would generate them. The
channel uses the service config shipped beside the proto, so a busy
replica (RESOURCE_EXHAUSTED) or one going away (UNAVAILABLE, on calls that
change nothing) is retried with jittered backoff by gRPC itself.

The upload carries the file's SHA-256: the service checks the bytes it
receives against it (DATA_LOSS on a mismatch), so the client never compares
hashes of the upload itself. The service removes identifying metadata (GPS,
serial numbers, XMP, data after the image) from photos, so a download is
checked against `Image.sha256`, the hash of the stored bytes, not the file.

    pip install -r requirements.txt
    python image_client.py --addr localhost:50051 --user alice ../images/phone-photo.jpg
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")
GENERATED = os.path.join(HERE, "generated")
SERVICE_CONFIG = os.path.join(PROTO_ROOT, "imageservice", "v1", "imageservice_grpc_service_config.json")
CHUNK = 256 * 1024


def generate_stubs():
    """Compiles the proto into ./generated (once) and makes it importable."""
    marker = os.path.join(GENERATED, "imageservice", "v1", "image_service_pb2_grpc.py")
    proto = os.path.join(PROTO_ROOT, "imageservice", "v1", "image_service.proto")
    # Again when the proto changed since (a new RPC, such as WatchImageEvents).
    if not os.path.exists(marker) or os.path.getmtime(marker) < os.path.getmtime(proto):
        os.makedirs(GENERATED, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
             f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}",
             "imageservice/v1/image_service.proto"],
            check=True,
        )
    sys.path.insert(0, GENERATED)


def upload(stub, pb, user, path):
    """Streams the file: the spec first, then chunks, the last one finishing."""
    data = open(path, "rb").read()

    def messages():
        yield pb.UploadImageRequest(spec=pb.ImageSpec(
            filename=os.path.basename(path),
            title="Uploaded from Python",
            tags=["python", "example"],
            expected_size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        ))
        for offset in range(0, len(data), CHUNK):
            last = offset + CHUNK >= len(data)
            yield pb.UploadImageRequest(chunk=data[offset:offset + CHUNK], finish_write=last)

    response = stub.UploadImage(messages(), metadata=[("x-user-id", user)])
    return response.image, data


def download(stub, pb, user, image_id):
    """Collects the streamed bytes; the first message describes the range."""
    stream = stub.DownloadImage(pb.DownloadImageRequest(image_id=image_id), metadata=[("x-user-id", user)])
    first = next(stream)
    body = b"".join(message.chunk for message in stream)
    assert len(body) == first.content_range.length, "short download"
    return body


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="localhost:50051")
    parser.add_argument("--user", default="alice")
    parser.add_argument("file")
    args = parser.parse_args()

    generate_stubs()
    import grpc
    from imageservice.v1 import image_service_pb2 as pb
    from imageservice.v1 import image_service_pb2_grpc as rpc

    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(json.load(open(SERVICE_CONFIG)))),
    ]
    with grpc.insecure_channel(args.addr, options=options) as channel:
        stub = rpc.ImageServiceStub(channel)
        image, data = upload(stub, pb, args.user, args.file)
        print(f"uploaded {image.image_id}: {image.content_type} {image.width}x{image.height}, {image.size_bytes} bytes")
        if image.metadata_stripped and image.uploaded_sha256 != image.sha256:
            print(f"the service removed identifying metadata: it stores {image.size_bytes} of the "
                  f"file's {len(data)} bytes, and checked the upload against the file's sha256")

        page = stub.ListImages(pb.ListImagesRequest(owner_id=args.user, tag="python", page_size=10),
                               metadata=[("x-user-id", args.user)])
        listed = [i.image_id for i in page.images]
        print(f"listed {len(listed)} image(s) of {args.user} tagged python")
        if image.image_id not in listed:
            sys.exit("the uploaded image is not listed")

        body = download(stub, pb, args.user, image.image_id)
        if hashlib.sha256(body).hexdigest() != image.sha256:
            sys.exit("the downloaded bytes do not match the stored image's sha256")
        if body == data:
            print(f"downloaded {len(body)} bytes, sha256 {image.sha256[:16]}…: the file's bytes")
        elif image.metadata_stripped and image.uploaded_sha256 != image.sha256:
            print(f"downloaded {len(body)} bytes, sha256 {image.sha256[:16]}…: as stored, "
                  f"with metadata removed ({len(data) - len(body)} of the file's {len(data)} bytes; "
                  "pixels untouched)")
        else:
            sys.exit("the stored bytes differ from the file, yet no metadata was removed")

        try:
            stub.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id), metadata=[("x-user-id", "mallory")])
            sys.exit("another user could delete the image")
        except grpc.RpcError as error:
            print(f"another user may not delete it: {error.code().name}")
        stub.DeleteImage(pb.DeleteImageRequest(image_id=image.image_id), metadata=[("x-user-id", args.user)])
        print("deleted")


if __name__ == "__main__":
    main()
