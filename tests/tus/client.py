"""Drives a stock tus client (tuspy, from PyPI) against UDIM, as a test helper.

usage: client.py ENDPOINT TOKEN FILE CHUNK_SIZE STOP_AT [UPLOAD_URL]
Uploads FILE in CHUNK_SIZE PATCHes up to byte STOP_AT, resuming UPLOAD_URL when given, and
prints {"url": ..., "offset": ...} as JSON. When tuspy reports failure, prints
{"url", "offset", "error"} and exits 1.
"""
import json
import sys

from tusclient import client

endpoint, token, path, chunk_size, stop_at = sys.argv[1:6]
url = sys.argv[6] if len(sys.argv) > 6 else None
tus = client.TusClient(endpoint, headers={"Authorization": "Bearer " + token})
uploader = None
try:
    # Resuming, the constructor already asks the server for the offset.
    uploader = tus.uploader(
        file_path=path,
        chunk_size=int(chunk_size),
        metadata={"filename": "recording.mp4", "filetype": "video/mp4", "data_category": "video"},
        upload_checksum=True,
        url=url,
    )
    uploader.upload(stop_at=int(stop_at))
except Exception as error:  # whatever tuspy raises, the test needs the upload's URL
    print(json.dumps({
        "url": uploader.url if uploader else url,
        "offset": uploader.offset if uploader else None,
        "error": repr(error),
    }))
    sys.exit(1)
print(json.dumps({"url": uploader.url, "offset": uploader.offset}))
