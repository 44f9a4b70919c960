"""An event consumer of image-service: a CDN purger (or feed builder) that
resumes where it stopped.

It watches `WatchImageEvents` as a service identity the server names in
`--event-watchers`, handles each event, and only then writes the event's
cursor to a file: after a crash, a restart or the stream's end it watches
again from that cursor, on whichever replica answers, and misses nothing.
Delivery is at least once, so an event may come again after a reconnect;
handling is made idempotent by remembering each image's last etag applied
(etags are `r{revision}`, increasing), and a purge is idempotent anyway.

The stream ends with a status carrying `x-resume-cursor` when the replica
shuts down (UNAVAILABLE) or the consumer read too slowly (RESOURCE_EXHAUSTED);
a cursor older than the retention is OUT_OF_RANGE: the consumer has a gap and
must rebuild from ListImages, so it stops and says so.

    pip install -r requirements.txt
    python watch_events.py --addr localhost:50051 --user cdn-purger --cursor-file purger.cursor
"""
import argparse
import json
import os
import random
import sys
import time

import grpc

from image_client import generate_stubs


def read_cursor(path):
    """The cursor saved by the last run, or "" (from now) on the first."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def save_cursor(path, cursor):
    """Written to a temporary file and renamed: a crash leaves the old one whole."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(cursor)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def handle(pb, event, last_etags):
    """Applies one event once: a repeat (same image, an etag already applied) is skipped."""
    revision = int(event.etag.lstrip("r") or 0)
    if last_etags.get(event.image_id, -1) >= revision:
        return
    last_etags[event.image_id] = revision
    kind = pb.ImageEventType.Name(event.type)
    if event.type == pb.IMAGE_EVENT_TYPE_DELETED:
        # A real purger calls its CDN's purge API with these paths.
        print(json.dumps({"purge": list(event.object_keys), "image_id": event.image_id}))
    else:
        print(json.dumps({"event": kind, "image_id": event.image_id, "etag": event.etag}))
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default="localhost:50051")
    parser.add_argument("--user", required=True, help="a service identity in --event-watchers")
    parser.add_argument("--cursor-file", default="events.cursor")
    parser.add_argument("--from-oldest", action="store_true",
                        help="without a saved cursor, start at the oldest retained event")
    parser.add_argument("--count", type=int, default=0, help="stop after this many events (0: never)")
    args = parser.parse_args()

    generate_stubs()
    from imageservice.v1 import image_service_pb2 as pb
    from imageservice.v1 import image_service_pb2_grpc as rpc

    cursor = read_cursor(args.cursor_file) or ("oldest" if args.from_oldest else "")
    last_etags = {}
    handled = 0
    failures = 0
    channel = grpc.insecure_channel(args.addr)
    stub = rpc.ImageServiceStub(channel)
    while True:
        request = pb.WatchImageEventsRequest(cursor=cursor)
        try:
            for message in stub.WatchImageEvents(request, metadata=[("x-user-id", args.user)]):
                handle(pb, message.event, last_etags)
                cursor = message.event.cursor
                save_cursor(args.cursor_file, cursor)
                handled += 1
                failures = 0
                if args.count and handled >= args.count:
                    return 0
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.OUT_OF_RANGE:
                print(f"gap: {error.details()}; rebuild from ListImages", file=sys.stderr)
                return 2
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                print(f"watch failed: {code.name}: {error.details()}", file=sys.stderr)
                return 1
            trailers = dict(error.trailing_metadata() or ())
            cursor = trailers.get("x-resume-cursor", cursor)
            failures += 1
        # Full jitter, 0.25 s doubling up to 8 s, so replicas' watchers do not return in step.
        time.sleep(random.uniform(0, min(8.0, 0.25 * 2 ** min(failures, 5))))


if __name__ == "__main__":
    sys.exit(main())
