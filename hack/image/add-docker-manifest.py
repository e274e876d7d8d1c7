"""Adds a Docker `manifest.json` to an OCI archive, so that `docker load` reads it too.

Usage: add-docker-manifest.py ARCHIVE IMAGE_NAME

`podman save --format oci-archive` writes an OCI image layout (index.json, blobs/);
`docker load` wants a manifest.json naming the config and layer blobs and the tags.
Both files can live in one tar: each tool reads the one it knows.
"""
import io
import json
import sys
import tarfile


def blob(tar, digest):
    algo, hexdigest = digest.split(":", 1)
    return json.load(tar.extractfile(f"blobs/{algo}/{hexdigest}"))


def main(path, name):
    with tarfile.open(path) as tar:
        index = json.load(tar.extractfile("index.json"))
        (entry,) = index["manifests"]
        manifest = blob(tar, entry["digest"])
    to_path = lambda d: "blobs/" + d["digest"].replace(":", "/", 1)
    docker = [{
        "Config": to_path(manifest["config"]),
        "RepoTags": [name],
        "Layers": [to_path(layer) for layer in manifest["layers"]],
    }]
    data = json.dumps(docker).encode()
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
