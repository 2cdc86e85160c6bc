"""The manifest's facts written into each ONNX file of the export, so that the runtime can
refuse a manifest that was edited afterwards or a file mixed in from another export
(:mod:`runtime.manifest.facts` says which facts and how they are checked)."""

from __future__ import annotations

import dataclasses

from runtime.atomic import write_bytes
from runtime.manifest import Manifest, sha256_file
from runtime.manifest.facts import FACT_PREFIX, file_facts


def stamp_facts(manifest: Manifest) -> Manifest:
    """Write :func:`runtime.manifest.facts.file_facts` into every ONNX file's
    ``metadata_props`` (replacing earlier ``omama.*`` entries, keeping others such as
    ultralytics'), each file atomically; returns ``manifest`` with those files' new sha256
    and size. Only metadata changes: the graph and its weights (external data included,
    which is not rewritten) stay byte for byte what was verified."""
    import onnx

    files = []
    for entry in manifest.files:
        if entry.format == "onnx":
            path = manifest.path_of(entry)
            model = onnx.load(str(path), load_external_data=False)
            props = model.metadata_props
            kept = [(p.key, p.value) for p in props if not p.key.startswith(FACT_PREFIX)]
            del model.metadata_props[:]
            for key, value in [*kept, *file_facts(manifest, entry).items()]:
                model.metadata_props.add(key=key, value=value)
            write_bytes(path, model.SerializeToString())
            entry = dataclasses.replace(
                entry, sha256=sha256_file(path), size_bytes=path.stat().st_size
            )
        files.append(entry)
    manifest.files = files
    return manifest
