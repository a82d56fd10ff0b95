"""Feature store -> the official per-image files (``<name>.delg_global``, ``<name>.delg_local``).

    export_store(open_store("out/features/roxford5k_query"), "official/query")
    export_features("out/features", "official", dataset="roxford5k")  # query/ and index/

A revisitop pair of stores is written as the official pipeline lays it out: the queries' files in
``query/`` (their locations in the crop's frame, as the official extractor crops queries too), the
database's in ``index/``. Beside the files, ``export_info.json`` (ignored by the official tools)
keeps what the files cannot hold: the store's provenance, its query crop boxes, the pyramid scales
(so that 1 / scale converts back bit for bit), the descriptors' dtype and each image's number of
local features (a file cut at a feature boundary still parses: the count tells); the importer reads
it when present.

Every output folder is written as a staging folder beside it and renamed into place when whole
(core/io.py staging_folder); one that exists and is not empty is refused before anything is written
unless overwrite. Two images whose names give one file (``a`` twice, or ``a`` and ``./a``) are
refused with both names, as one would overwrite the other.
"""

import os

import numpy as np
from tqdm import tqdm

from core.io import check_writable, refuse_existing, staging_folder, write_json
from datasets.features import open_store
from tools.extraction.stores import dataset_of_store, part_store_names
from tools.interop.official_files import (
    GLOBAL_EXTENSION,
    LOCAL_EXTENSION,
    check_file_names,
    write_global,
    write_local,
)

EXPORT_INFO = "export_info.json"
# the official folders of a revisitop pair, in the order of part_store_names (query, database)
OFFICIAL_FOLDERS = ("query", "index")


def export_store(store, folder, show_progress=False, label=None):
    """Write every image of an opened store as official files under folder (not staged: see
    export_features); return the count."""
    check_file_names(store.names, folder, store.folder)
    os.makedirs(folder, exist_ok=True)
    descriptors = store.global_descriptors() if store.has_global else None
    for index, name in enumerate(
        tqdm(
            store.names,
            desc=label or os.path.basename(folder),
            unit="img",
            disable=not show_progress,
        )
    ):
        stem = os.path.join(folder, name)
        if descriptors is not None:
            write_global(stem + GLOBAL_EXTENSION, descriptors[index])
        if store.has_local:
            local = store.local_at(index)
            write_local(
                stem + LOCAL_EXTENSION,
                local["locations"],
                local["scales"],
                local["scores"],
                local["descriptors"],
            )
    write_json(os.path.join(folder, EXPORT_INFO), export_info(store))
    return len(store.names)


def export_info(store):
    """What the official files cannot hold, for the importer (see the module docstring)."""
    info = {
        "store": os.path.abspath(store.folder),
        "num_images": len(store.names),
        "provenance": store.provenance,
        "crop_boxes": store.crop_boxes,
        "local_scales": [],
        "float16": False,
        "local_counts": {},
    }
    if store.has_local:
        fields, offsets = store.local_rows()
        info["local_scales"] = [float(s) for s in np.unique(np.asarray(fields["scales"]))]
        info["float16"] = fields["descriptors"].dtype == np.float16
        info["local_counts"] = dict(zip(store.names, np.diff(np.asarray(offsets)).tolist()))
    return info


def pair_dataset(store_dir, dataset=None):
    """The dataset whose <dataset>_query / <dataset>_database stores lie under store_dir."""
    entries = set(os.listdir(store_dir))
    datasets = sorted(
        {
            dataset_of_store(entry)
            for entry in entries
            if set(part_store_names(dataset_of_store(entry))) <= entries
        }
    )
    if dataset is None and len(datasets) == 1:
        return datasets[0]
    if dataset is not None and dataset in datasets:
        return dataset
    raise FileNotFoundError(
        f"{store_dir}: expected a store (meta.json) or a pair of <dataset>_query / "
        f"<dataset>_database stores{f' for {dataset}' if dataset else ''}; pairs found: "
        f"{', '.join(datasets) or 'none'}" + ("" if dataset else " (choose one with --dataset)")
    )


def export_features(store_dir, out_dir, dataset=None, show_progress=False, overwrite=False):
    """Export one store (store_dir holds meta.json) into out_dir, or a revisitop pair into
    out_dir/query and out_dir/index. Returns {output folder: number of images}. An output folder
    that exists and is not empty is refused (FileExistsError) before anything is written, unless
    overwrite; each is replaced whole when its export is complete."""
    if os.path.isfile(os.path.join(store_dir, "meta.json")):
        targets = {out_dir: store_dir}
    else:
        names = part_store_names(pair_dataset(store_dir, dataset))
        targets = {
            os.path.join(out_dir, official): os.path.join(store_dir, name)
            for name, official in zip(names, OFFICIAL_FOLDERS)
        }
    for target in targets:
        refuse_existing(target, overwrite)
        check_writable(os.path.dirname(os.path.abspath(target)))
    stores = {target: open_store(source) for target, source in targets.items()}
    for target, store in stores.items():
        check_file_names(store.names, target, store.folder)
    written = {}
    for target, store in stores.items():
        with staging_folder(target, overwrite) as staging:
            label = os.path.basename(os.path.normpath(target))
            written[target] = export_store(store, staging, show_progress, label)
    return written
