"""napari widgets: thin shells over the core; one file per stage or tool."""
