"""Data layer: image decoding, dataset formats (GLDv2 CSVs, the seed's lists, revisitop),
transforms, loaders.

Modules are imported where they are used (``from datasets.loader import build_train_dataset``); this
package file imports nothing so that light tools do not pay for torch.
"""
