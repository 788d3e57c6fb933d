"""The curation and caption quality report: `OUT/report/index.html` and `OUT/report/report.json`.

Built from a run's outputs alone (run.json, the manifests, the shards), so it works on any past run
and on shards recaptioned later. `collect` streams the manifests once; `examples` pulls the sampled
clips out of the shards; `alignment` scores captions against frames with CLIP; `plots` and `page`
draw it; `compare` sets two runs side by side; `build` puts it together.
"""
