"""Feature store -> the official per-image files (``<name>.delg_global``, ``<name>.delg_local``).

    export_store(open_store("out/features/roxford5k_query"), "official/query")
    export_features("out/features", "official", dataset="roxford5k")  # query/ and index/

A revisitop pair of stores is written as the official pipeline lays it out: the queries' files in
``query/`` (their locations in the crop's frame, as the official extractor crops queries too), the
database's in ``index/``. Beside the files, ``export_info.json`` (ignored by the official tools)
keeps what the files cannot hold: the store's provenance, its query crop boxes, the pyramid scales
(so that 1 / scale converts back bit for bit) and the descriptors' dtype; the importer reads it when
present.
"""

import os

import numpy as np
from tqdm import tqdm

from core.io import write_json
from datasets.features import open_store
from tools.extraction.stores import dataset_of_store, part_store_names
from tools.interop.official_files import (
    GLOBAL_EXTENSION,
    LOCAL_EXTENSION,
    write_global,
    write_local,
)

EXPORT_INFO = "export_info.json"
# the official folders of a revisitop pair, in the order of part_store_names (query, database)
OFFICIAL_FOLDERS = ("query", "index")


def export_store(store, folder, show_progress=False):
    """Write every image of an opened store as official files under folder; return the count."""
    os.makedirs(folder, exist_ok=True)
    descriptors = store.global_descriptors() if store.has_global else None
    for index, name in enumerate(
        tqdm(store.names, desc=os.path.basename(folder), unit="img", disable=not show_progress)
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
    }
    if store.has_local:
        fields, _ = store.local_rows()
        info["local_scales"] = [float(s) for s in np.unique(np.asarray(fields["scales"]))]
        info["float16"] = fields["descriptors"].dtype == np.float16
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


def export_features(store_dir, out_dir, dataset=None, show_progress=False):
    """Export one store (store_dir holds meta.json) into out_dir, or a revisitop pair into
    out_dir/query and out_dir/index. Returns {output folder: number of images}."""
    if os.path.isfile(os.path.join(store_dir, "meta.json")):
        return {out_dir: export_store(open_store(store_dir), out_dir, show_progress)}
    written = {}
    for name, official in zip(part_store_names(pair_dataset(store_dir, dataset)), OFFICIAL_FOLDERS):
        target = os.path.join(out_dir, official)
        written[target] = export_store(
            open_store(os.path.join(store_dir, name)), target, show_progress
        )
    return written
