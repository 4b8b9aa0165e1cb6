"""Synthetic EOPF Sentinel-2 products, their source STAC items, and a loopback server.

- `synthesize.synthesize_product(hierarchy, output, scale, seed)`: a Zarr v2 store with the
  structure of a real product (packaged reference hierarchies: "l2a", "l1c").
- `item.make_source_item(item_id, collection, zarr_href, product_attrs)`: its EODC-shaped item.
- `build.write_sample(root, product, ...)`: both, into the server layout (`layout.py`).
- `server`: `python -m geozarr_local.sample.server --host 127.0.0.1 --port N --root DIR`.
- CLI: `geozarr-pipeline sample synthesize|serve`.
"""
