"""DELG feature extraction: image pyramid (pyramid), keypoint geometry (geometry), local feature
selection (selection), image sets (sources), resumable shards (shards) and the multi-process run
(runner)."""
