"""STAC items for converted stores: read the store's structure, build, translate hrefs, validate."""
